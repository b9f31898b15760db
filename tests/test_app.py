"""The web page's JSON API on a tiny trained model: answers, errors, limits and concurrency."""

from __future__ import annotations

import base64
import io
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the web extra is not installed (pip install 'dogvae[web]')")
import httpx  # noqa: E402
from conftest import APP_BREEDS as BREEDS  # noqa: E402

from dogvae import checkpoint  # noqa: E402
from dogvae.app import background_server, create_app, service  # noqa: E402
from dogvae.app.service import ServedRun  # noqa: E402
from dogvae.cli import main  # noqa: E402
from dogvae.latents import open_store  # noqa: E402
from dogvae.tasks import ancestry, identify  # noqa: E402
from dogvae.train import TrainConfig  # noqa: E402

with warnings.catch_warnings():
    # Starlette 1.x suggests httpx2 for its test client; httpx, in the dev extra, still works.
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

MULTIPART = {"content-type": "multipart/form-data; boundary=dogvae"}


@pytest.fixture(scope="module")
def served(tiny_run):
    return ServedRun(tiny_run[0])


@pytest.fixture(scope="module")
def client(served):
    with TestClient(create_app(served)) as c:
        yield c


@pytest.fixture(scope="module")
def dogs(tiny_run):
    """Photo files: the synthetic mutts, never seen in training."""
    return sorted((tiny_run[1] / "mutts").glob("*.jpg"))


def upload(path, name=None):
    return {"image": (name or path.name, path.read_bytes(), "image/jpeg")}


def pixels(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def png_pixels(content: bytes) -> np.ndarray:
    assert content[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(content)))


def assert_problem(response, status: int, reason: str):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["reason"] == reason and body["error"], body
    return body


def test_model_card_gives_preset_data_metrics_breeds_and_limits(client, tiny_run):
    card = client.get("/api/model").json()
    model = checkpoint.load(tiny_run[0])
    assert card["breeds"] == model.breeds and len(card["breeds"]) == BREEDS
    trained_with = TrainConfig(data="d", out="o").preset  # the tiny run takes the default
    assert (card["preset"], card["image_size"], card["latent_dim"]) == (
        trained_with, model.config.image_size, model.config.latent_dim,
    )  # fmt: skip
    assert card["data"]["n_images"] == BREEDS * 30 and card["data"]["layout"] == "kaggle"
    assert {"elbo", "psnr", "bits_per_dim"} <= set(card["metrics"]["val"])
    assert card["store"]["available"] and card["store"]["n_images"] == BREEDS * 30
    assert card["probe"]["chosen"] in ("knn", "logistic")
    assert card["limits"]["max_upload_bytes"] == 20_000_000
    assert card["limits"]["max_pixels"] == 40_000_000


def test_openapi_documents_every_endpoint_and_the_page_loads_nothing_from_outside(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/identify", "/api/reconstruct", "/api/ancestry", "/api/mix", "/api/photos"):
        assert "post" in paths[path], path
        assert "multipart/form-data" in paths[path]["post"]["requestBody"]["content"]
    for path in ("/api/sample", "/api/model", "/api/gallery", "/api/mix/frame.png"):
        assert "get" in paths[path], path
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/", "/static/app.js", "/static/style.css"):
        text = client.get(asset).text
        assert "http://" not in text and "https://" not in text, asset  # no CDN, no network


def test_a_photo_uploaded_once_is_asked_about_by_its_ref(client, dogs):
    photo = client.post("/api/photos", files=upload(dogs[0])).json()["photo"]
    assert photo["ref"].startswith("photo:") and photo["name"] == dogs[0].name
    assert pixels(photo["image"]).shape == (32, 32, 3)
    by_ref = client.post("/api/identify", data={"photo": photo["ref"]}).json()
    by_upload = client.post("/api/identify", files=upload(dogs[0])).json()
    assert by_ref == by_upload
    again = client.post("/api/photos", files=upload(dogs[0], "renamed.jpg")).json()["photo"]
    assert again["ref"] == photo["ref"]  # the ref is the content's hash


def test_identify_answers_as_the_library_does(client, served, tiny_run, dogs):
    run, _ = tiny_run
    result = client.post("/api/identify", files=upload(dogs[1])).json()
    assert set(result) == {
        "photo", "breed", "top", "source", "accuracy", "note", "novelty", "probe", "probe_top"
    }  # fmt: skip
    assert result["source"] == "probe" and result["probe_top"] is None  # a plain VAE
    assert all(pixels(t["image"]).shape == (32, 32, 3) for t in result["top"])
    assert len(result["top"]) == BREEDS  # top 5 of 3 breeds
    probabilities = [t["probability"] for t in result["top"]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) == pytest.approx(1.0)
    assert set(result["novelty"]) == {
        "score", "threshold", "latent_distance_ratio", "reconstruction_error_ratio",
        "kl_rate_ratio", "complexity_gap_ratio", "unlike_training_dogs",
    }  # fmt: skip
    assert result["breed"] in (*served.breeds, None)
    library = identify(served.model, served.store, dogs[1], run=run)
    assert [t["breed"] for t in result["top"]] == [t["breed"] for t in library["top"]]
    assert probabilities == pytest.approx([t["probability"] for t in library["top"]], abs=1e-6)
    assert result["breed"] == library["breed"]
    top2 = client.post("/api/identify?top=2", files=upload(dogs[1])).json()["top"]
    assert top2 == result["top"][:2]


def test_ancestry_gives_parents_shares_and_decoded_centroids_as_the_library_does(
    client, served, dogs
):
    result = client.post("/api/ancestry", files=upload(dogs[2])).json()
    assert sum(p["share"] for p in result["parents"]) == pytest.approx(1.0)
    assert all(pixels(p["image"]).shape == (32, 32, 3) for p in result["parents"])
    assert pixels(result["mixture"]).shape == (32, 32, 3)
    library = ancestry(served.model, served.store, dogs[2])
    assert [(p["breed"], p["share"]) for p in result["parents"]] == [
        (p["breed"], pytest.approx(p["share"], abs=1e-4)) for p in library["parents"]
    ]
    assert result["ranking"] == library["ranking"]
    assert result["novelty"]["unlike_training_dogs"] == library["novelty"]["unlike_training_dogs"]


def test_reconstruct_returns_the_decoded_photo_and_its_psnr(client, dogs):
    result = client.post("/api/reconstruct", files=upload(dogs[0])).json()
    original, decoded = pixels(result["photo"]["image"]), pixels(result["reconstruction"])
    assert original.shape == decoded.shape == (32, 32, 3)
    mse = np.mean((original / 255.0 - decoded / 255.0) ** 2)
    assert result["psnr"] == pytest.approx(-10 * np.log10(mse), abs=0.2)


def test_mix_strip_then_single_frames_by_ref_without_uploading_again(client, served, dogs):
    photo_ref = client.post("/api/photos", files=upload(dogs[0])).json()["photo"]["ref"]
    breed = served.breeds[1]
    result = client.post("/api/mix", data={"a": photo_ref, "b": breed, "steps": 5}).json()
    assert result["a"]["kind"] == "photo" and result["b"] == {
        "ref": f"breed:{breed}", "label": breed, "kind": "breed", "image": None,
    }  # fmt: skip
    assert result["t"] == [0.0, 0.25, 0.5, 0.75, 1.0] and len(result["frames"]) == 5
    first = client.get(result["frame_url"] + "&t=0")
    assert first.headers["content-type"] == "image/png"
    assert np.array_equal(png_pixels(first.content), pixels(result["frames"][0]))
    near_a = png_pixels(client.get(result["frame_url"] + "&t=0.1").content)
    near_b = png_pixels(client.get(result["frame_url"] + "&t=0.9").content)
    assert not np.array_equal(near_a, near_b)
    strip = client.get(result["strip_url"])
    assert strip.status_code == 200 and "attachment" in strip.headers["content-disposition"]
    width, height = Image.open(io.BytesIO(strip.content)).size
    assert width > 5 * height  # five steps and the photo end side by side


def test_mix_takes_two_uploads_two_breeds_or_gallery_dogs(client, served, dogs):
    files = {**{"image_a": upload(dogs[0])["image"]}, "image_b": upload(dogs[1])["image"]}
    uploads = client.post("/api/mix", files=files, data={"t": "0.5"}).json()
    assert [uploads["a"]["kind"], uploads["b"]["kind"]] == ["photo", "photo"]
    assert uploads["t"] == [0.5] and len(uploads["frames"]) == 1
    breeds = client.post(
        "/api/mix",
        data={"a": served.breeds[0].upper(), "b": f"breed:{served.breeds[2]}", "method": "slerp",
              "breed_as": "medoid"},
    )  # fmt: skip
    assert breeds.status_code == 200 and breeds.json()["breed_as"] == "medoid"
    gallery = client.get("/api/gallery").json()["images"]
    assert {dog["breed"] for dog in gallery} == set(served.breeds)  # breeds taken in turn
    mixed = client.post("/api/mix", data={"a": gallery[0]["ref"], "b": gallery[1]["ref"]})
    assert mixed.status_code == 200 and mixed.json()["a"]["kind"] == "gallery"
    identified = client.post("/api/identify", data={"photo": gallery[0]["ref"]})
    assert identified.status_code == 200


def test_sample_repeats_with_a_seed_and_samples_around_a_breed(client, served):
    first = client.get("/api/sample", params={"n": 4, "seed": 7}).json()
    again = client.get("/api/sample", params={"n": 4, "seed": 7}).json()
    other = client.get("/api/sample", params={"n": 4, "seed": 8}).json()
    assert first == again and first["images"] != other["images"] and first["source"] == "gmm"
    assert [pixels(u).shape for u in first["images"]] == [(32, 32, 3)] * 4
    prior = client.get("/api/sample", params={"n": 4, "seed": 7, "source": "prior"}).json()
    assert prior["source"] == prior["sampler"] == "prior" and prior["images"] != first["images"]
    unseeded = client.get("/api/sample").json()
    assert unseeded["n"] == 8 and isinstance(unseeded["seed"], int)
    breed = client.get("/api/sample", params={"breed": served.breeds[2], "n": 2}).json()
    assert breed["source"] == served.breeds[2] and breed["sampler"] == "breed"


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels and holds none (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("content", "status", "reason"),
    [
        (b"", 400, "empty_file"),
        (b"this is a shopping list, not a dog", 415, "not_an_image"),
        (png_header(10_000, 5_000), 413, "too_many_pixels"),
        ("truncated", 422, "truncated"),
    ],
)
def test_bad_uploads_get_a_4xx_with_a_reason(client, dogs, content, status, reason):
    if content == "truncated":
        content = dogs[0].read_bytes()[:300]
    for endpoint in ("/api/photos", "/api/identify", "/api/reconstruct", "/api/ancestry"):
        response = client.post(endpoint, files={"image": ("dog.jpg", content, "image/jpeg")})
        assert_problem(response, status, reason)
    mixed = client.post("/api/mix", files={"image_a": ("a.jpg", content)}, data={"b": "x"})
    assert_problem(mixed, status, reason)


def test_uploads_over_the_byte_limit_are_refused_while_reading(served, dogs):
    with TestClient(create_app(served, max_upload_bytes=500)) as c:
        photo = c.post("/api/identify", files=upload(dogs[0]))  # a 32 px JPEG is over 500 B
        assert "larger than" in assert_problem(photo, 413, "too_large")["error"]
        declared = c.post(  # Content-Length says too much: refused before the body is read
            "/api/photos", content=b"x" * 1_100_000, headers=MULTIPART
        )
        assert_problem(declared, 413, "too_large")
        chunked = c.post(  # no Content-Length: counted as it arrives
            "/api/identify", content=iter([b"x" * 700_000] * 3), headers=MULTIPART
        )
        assert_problem(chunked, 413, "too_large")


def wide_png(width: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (width, 1), (120, 80, 40, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_concurrent_uploads_decode_within_the_pixel_budget(served, monkeypatch):
    # 1 x 39,000,000 pixels decode to 156 MB and peak at ~750 MB: twenty at once took a
    # server past 9 GB (bench/serve_memory.py). Here: 1 x 300,000, a budget of two of them.
    monkeypatch.setattr(served, "decode_budget", service.PixelBudget(700_000))
    real_load_photo, decoding, most = service.load_photo, [], [0]
    lock = threading.Lock()

    def counted(*args, **kwargs):
        with lock:
            decoding.append(1)
            most[0] = max(most[0], len(decoding), served.decode_budget.in_use // 300_000)
        try:
            time.sleep(0.05)  # long enough for the others to pile up
            return real_load_photo(*args, **kwargs)
        finally:
            with lock:
                decoding.pop()

    monkeypatch.setattr(service, "load_photo", counted)
    photos = [wide_png(300_000 + i) for i in range(8)]  # distinct bytes, distinct refs
    with ThreadPoolExecutor(8) as pool:
        found = list(pool.map(lambda png: served.add_photo(png, "wide.png"), photos))
    assert most[0] == 2 and served.decode_budget.in_use == 0
    assert len({photo.ref for photo in found}) == 8
    alone = served.add_photo(wide_png(900_000), "wider.png")  # over the whole budget: alone
    assert alone.pixels.shape == (served.image_size, served.image_size, 3)
    assert np.array_equal(found[0].pixels, alone.pixels)  # the same colour, the same crop


def fuzzed_photo(rng: random.Random, real: bytes) -> bytes:
    """Bytes a careless or hostile client might send as a photo."""
    kind = rng.randrange(10)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 2000))
    if kind == 1:
        return real[: rng.randrange(len(real))]
    if kind == 2:  # a real photo with a few bytes flipped
        data = bytearray(real)
        for _ in range(rng.randrange(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if kind == 3:
        return png_header(rng.choice([0, 1, 7, 6_500, 2**31 - 1]), rng.choice([0, 1, 6_200]))
    if kind == 4:
        return wide_png(rng.choice([1, 3, 1_000, 40_000]))
    return real  # kinds 5 to 9: a good photo half the time


# (sensible values, values out of range or not of the field's kind) per parameter
FUZZ_VALUES = {
    "steps": (["2", "8", "16"], ["1", "17", "-3", "2.5", "many"]),
    "t": (["0", "0.5", "1"], ["-0.1", "1.5", "nan", "inf", "1e309", ""]),
    "method": (["lerp", "slerp"], ["cubic", ""]),
    "breed_as": (["centroid", "medoid"], ["mean"]),
    "n": (["1", "8", "64"], ["0", "65", "-1", "1e3"]),
    "temperature": (["0", "1", "3"], ["3.5", "-1", "nan"]),
    "seed": (["0", "7", "4294967295"], ["4294967296", "-1", "x"]),
    "source": (["gmm", "prior"], ["vamp", ""]),
}
JUNK_NAMES = ["", " ", "breed:", "photo:", "gallery:", "photo:zz", "../../etc/passwd", "%00",
              "\u00e9\u2603", "x" * 300]  # fmt: skip


def fuzzed_value(rng: random.Random, name: str, names: list[str]) -> str:
    """A sensible value for `name` most of the time, else one out of range or of another kind."""
    sensible, bad = FUZZ_VALUES.get(name, (names, JUNK_NAMES))
    return rng.choice(sensible if rng.random() < 0.85 else bad)


def test_fuzzed_uploads_and_parameters_get_an_answer_or_a_4xx_never_a_500(client, served, dogs):
    """A seeded random walk over every endpoint's files and parameters: each request gets a
    200 of the documented kind or a JSON problem with a reason, and the server stays well."""
    rng = random.Random(18)
    real = dogs[0].read_bytes()
    refs = [client.post("/api/photos", files=upload(dogs[1])).json()["photo"]["ref"]]
    refs.append(next(iter(served.gallery)))
    names = refs + served.breeds + [f"breed:{b}" for b in served.breeds]
    fields = {
        "/api/photos": [],
        "/api/identify": ["photo"],
        "/api/reconstruct": ["photo"],
        "/api/ancestry": ["photo"],
        "/api/mix": ["a", "b", "steps", "t", "method", "breed_as"],
    }
    queries = {
        "/api/mix/frame.png": ["a", "b", "t", "method", "breed_as"],
        "/api/mix/strip.png": ["a", "b", "steps", "method", "breed_as"],
        "/api/sample": ["n", "temperature", "seed", "breed", "source"],
    }
    statuses = []
    for _ in range(200):
        pick = lambda fields: {f: fuzzed_value(rng, f, names) for f in fields  # noqa: E731
                               if rng.random() < 0.8}  # fmt: skip
        if rng.random() < 0.6:
            endpoint = rng.choice(list(fields))
            slots = ["image_a", "image_b"] if endpoint == "/api/mix" else ["image"]
            files = {n: ("x.png", fuzzed_photo(rng, real)) for n in slots if rng.random() < 0.5}
            response = client.post(endpoint, data=pick(fields[endpoint]), files=files or None)
        else:
            endpoint = rng.choice(list(queries))
            response = client.get(endpoint, params=pick(queries[endpoint]))
        statuses.append(response.status_code)
        assert response.status_code in (200, 400, 404, 413, 415, 422, 503), response.text
        if response.status_code != 200:
            assert_problem(response, response.status_code, response.json()["reason"])
        elif endpoint.endswith(".png"):
            png_pixels(response.content)
        else:
            assert isinstance(response.json(), dict)
    assert 200 in statuses and len(set(statuses)) >= 3  # the walk reached answers and refusals
    assert client.get("/api/model").status_code == 200


def test_requests_that_make_no_sense_get_a_4xx_with_a_reason(client, served):
    breed = served.breeds[0]
    assert_problem(client.post("/api/identify"), 422, "missing_photo")
    assert_problem(client.post("/api/identify", data={"photo": "photo:0000"}), 404, "unknown_photo")
    assert_problem(client.get("/api/sample", params={"breed": "poodle"}), 404, "unknown_breed")
    assert_problem(
        client.post("/api/mix", data={"a": "poodle", "b": "beagle"}), 404, "unknown_breed"
    )
    assert_problem(client.get("/api/sample", params={"n": 1000}), 422, "invalid_request")
    assert_problem(client.get("/api/mix/frame.png", params={"a": "x"}), 422, "invalid_request")
    assert_problem(client.post("/api/mix", data={"a": breed}), 422, "invalid_request")
    assert_problem(client.get("/api/nothing"), 404, "not_found")
    assert_problem(client.delete("/api/model"), 405, "method_not_allowed")


def test_the_server_forgets_old_photos_and_says_so(client, served, dogs, monkeypatch):
    monkeypatch.setattr(served, "_photo_cache_size", 1)
    first = client.post("/api/photos", files=upload(dogs[0])).json()["photo"]["ref"]
    client.post("/api/photos", files=upload(dogs[1]))
    forgotten = client.post("/api/mix", data={"a": first, "b": first})
    assert "upload it again" in assert_problem(forgotten, 404, "unknown_photo")["error"]


def test_without_a_latent_store_breed_questions_answer_503_and_the_rest_works(
    tiny_run, dogs, tmp_path
):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "model.safetensors", "metrics.json"):
        shutil.copy(tiny_run[0] / name, run / name)
    with TestClient(create_app(run, data=tmp_path / "gone")) as c:
        card = c.get("/api/model").json()
        assert not card["store"]["available"] and "--data" in card["store"]["message"]
        for endpoint in ("/api/identify", "/api/ancestry"):
            body = assert_problem(c.post(endpoint, files=upload(dogs[0])), 503, "no_latent_store")
            assert "--data" in body["error"]
        breed = card["breeds"][0]
        assert_problem(c.get("/api/sample", params={"breed": breed}), 503, "no_latent_store")
        assert_problem(c.post("/api/mix", data={"a": breed, "b": breed}), 503, "no_latent_store")
        assert c.post("/api/reconstruct", files=upload(dogs[0])).status_code == 200
        two = {"image_a": upload(dogs[0])["image"], "image_b": upload(dogs[1])["image"]}
        assert c.post("/api/mix", files=two).status_code == 200
        assert c.get("/api/sample", params={"source": "prior"}).status_code == 200
        assert_problem(c.get("/api/sample"), 503, "no_latent_store")  # the mixture needs it
        gallery = c.get("/api/gallery").json()
        assert gallery["images"] == [] and "--data" in gallery["message"]


@pytest.fixture(scope="module")
def live_url(client):
    """The same app on a real uvicorn server on a free loopback port, on a thread."""
    with background_server(client.app) as url:
        yield url


def test_fifty_concurrent_identify_requests_on_loopback_match_the_single_answer(live_url, dogs):
    with httpx.Client(base_url=live_url, timeout=30) as one:
        expected = {d.name: one.post("/api/identify", files=upload(d)).json() for d in dogs}
    assert len({e["top"][0]["probability"] for e in expected.values()}) > 1  # distinct dogs
    start = threading.Barrier(50, timeout=30)

    def ask(i: int):
        dog = dogs[i % len(dogs)]
        with httpx.Client(base_url=live_url, timeout=30) as own:  # its own connection
            start.wait()
            response = own.post("/api/identify", files=upload(dog))
        return dog.name, response.status_code, response.json()

    began = time.monotonic()
    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(ask, range(50)))
    print(f"50 concurrent identify requests answered in {time.monotonic() - began:.2f} s")
    assert [status for _, status, _ in answers] == [200] * 50
    assert all(body == expected[name] for name, _, body in answers)


def test_a_chunked_upload_over_the_limit_is_answered_413_not_reset(live_url):
    def endless():
        yield b'--dogvae\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n\r\n'
        for _ in range(30):  # 30 MB in all, no Content-Length
            yield b"\0" * 1_000_000

    with httpx.Client(base_url=live_url, timeout=30) as c:
        response = c.post("/api/identify", content=endless(), headers=MULTIPART)
    assert_problem(response, 413, "too_large")


def test_serve_prints_its_address_serves_and_stops_on_ctrl_c(tiny_run):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "dogvae", "serve", str(tiny_run[0]), "--port", "0"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)  # fmt: skip
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(" at http://" in x for x in lines):
            line = server.stdout.readline()
            if not line:
                break
            lines.append(line)
        address = next(x for x in lines if " at http://" in x).split(" at ")[1].split()[0]
        assert address.startswith("http://127.0.0.1:")
        assert httpx.get(f"{address}/api/model", timeout=10).json()["image_size"] == 32
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=20) == 130  # 128 + SIGINT, after a graceful shutdown
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_serve_on_a_busy_port_says_so_before_loading(tiny_run, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["serve", str(tiny_run[0]), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert "cannot listen on 127.0.0.1" in err and "--port" in err


def test_store_built_at_start_up_when_missing(tiny_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_run[0] / name, run / name)
    model = checkpoint.load(run)
    served = ServedRun(run)
    assert (run / "latents.npz").is_file() and served.store is not None
    assert len(served.store) == len(open_store(model, run, progress=False))


@pytest.mark.parametrize("name", ["狗.jpg", "щенок.png", "chien-été.jpg"])
def test_a_photo_named_in_any_script_downloads_as_a_strip(client, served, dogs, name):
    ref = client.post("/api/photos", files=upload(dogs[0], name)).json()["photo"]["ref"]
    strip = client.get("/api/mix/strip.png", params={"a": ref, "b": served.breeds[0]})
    assert strip.status_code == 200, strip.text
    disposition = strip.headers["content-disposition"]
    disposition.encode("ascii")  # a fallback for old clients, then the name itself (RFC 5987)
    stem = name.rsplit(".", 1)[0]
    assert f"filename*=UTF-8''dogvae-mix-{quote(stem)}-" in disposition, disposition
