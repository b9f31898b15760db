"""The JSON API's routes: each reads its request, asks the `ServedRun`, returns its answer.

Routes are plain `def`s, so FastAPI runs them on its worker threads and the event loop never
waits for the model. Photos arrive as a multipart `image` file or as the `ref` of one sent
before; errors are raised as exceptions that `dogvae.app.server` turns into JSON problems.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import Response

from dogvae.app import schemas
from dogvae.app.service import MAX_SAMPLES, MAX_STEPS, MixEnd, Photo, ServedRun, data_url, png_bytes
from dogvae.app.uploads import megabytes
from dogvae.tasks.sample import DEFAULT_SOURCE

PNG = {200: {"content": {"image/png": {}}, "description": "a PNG picture"}}
NO_STORE = {"Cache-Control": "no-store"}
PROBLEMS = {
    400: "the file is empty, or the request cannot be read",
    404: "unknown photo ref or breed",
    413: "the upload is over 20 MB or 40 megapixels",
    415: "the file is not an image",
    422: "a truncated image, or invalid parameters",
    503: "breed questions are off: the run's latent store could not be opened",
}


def documented(*statuses: int) -> dict:
    return {s: {"model": schemas.Problem, "description": PROBLEMS[s]} for s in statuses}


PHOTO_ERRORS = documented(400, 404, 413, 415, 422)
BREED_ERRORS = documented(404, 422, 503)


class ApiProblem(Exception):
    """An error answered as `{"error": error, "reason": reason}` with `status`."""

    def __init__(self, status: int, reason: str, error: str):
        super().__init__(error)
        self.status, self.reason, self.error = status, reason, error


async def served_run(request: Request) -> ServedRun:
    return request.app.state.served


async def upload_limit(request: Request) -> int:
    return request.app.state.max_upload_bytes


Served = Annotated[ServedRun, Depends(served_run)]
Limit = Annotated[int, Depends(upload_limit)]
Method = Literal["lerp", "slerp"]
BreedAs = Literal["centroid", "medoid"]
Source = Literal["gmm", "prior"]
ImageField = Annotated[
    UploadFile | None, File(description="a dog photo, any format Pillow reads (20 MB at most)")
]
PhotoField = Annotated[
    str | None, Form(description="instead of `image`: a `ref` from an earlier answer")
]
EndField = Annotated[str | None, Form(description="breed name, `breed:NAME` or a photo ref")]

router = APIRouter(prefix="/api")


def take_photo(served: ServedRun, limit: int, image: UploadFile | None, ref: str | None) -> Photo:
    """The uploaded photo (read up to `limit` bytes, then refused) or the one `ref` names."""
    if image is not None and ref:
        raise ApiProblem(422, "invalid_request", "give an image or a photo ref, not both")
    if image is not None:
        data = image.file.read(limit + 1)
        if len(data) > limit:
            raise ApiProblem(413, "too_large", f"the photo is larger than {megabytes(limit)}")
        return served.add_photo(data, Path(image.filename or "photo").name)
    if ref:
        return served.photo(ref)
    raise ApiProblem(
        422,
        "missing_photo",
        "no photo: send the file in the `image` field, or a ref from /api/photos in `photo`",
    )


@router.get("/model", response_model=schemas.ModelCard, tags=["model"])
def model_card(served: Served, limit: Limit):
    """Preset, shape, training data summary, validation metrics, breeds and limits."""
    return served.card(limit)


@router.get("/gallery", response_model=schemas.GalleryResult, tags=["model"])
def gallery(served: Served):
    """Validation dogs to mix, breeds in turn; their `ref`s work wherever a photo does."""
    return served.gallery_items()


@router.post("/photos", response_model=schemas.PhotoResult, responses=PHOTO_ERRORS, tags=["photos"])
def add_photo(served: Served, limit: Limit, image: ImageField = None):
    """Upload a photo once; its `ref` stands for it in every other call."""
    return {"photo": served.describe(take_photo(served, limit, image, None))}


@router.post(
    "/identify",
    response_model=schemas.IdentifyResult,
    responses=PHOTO_ERRORS | documented(503),
    tags=["photos"],
)
def identify(
    served: Served,
    limit: Limit,
    image: ImageField = None,
    photo: PhotoField = None,
    top: Annotated[int, Query(ge=1, le=20)] = 5,
):
    """The breed with calibrated probabilities, or the verdict 'unlike any training dog'."""
    served.require_store()
    return served.identify(take_photo(served, limit, image, photo), top)


@router.post(
    "/reconstruct",
    response_model=schemas.ReconstructResult,
    responses=PHOTO_ERRORS,
    tags=["photos"],
)
def reconstruct(served: Served, limit: Limit, image: ImageField = None, photo: PhotoField = None):
    """The photo through the VAE: its posterior mean decoded, with PSNR."""
    return served.reconstruct(take_photo(served, limit, image, photo))


@router.post(
    "/ancestry",
    response_model=schemas.AncestryResult,
    responses=PHOTO_ERRORS | documented(503),
    tags=["photos"],
)
def ancestry(served: Served, limit: Limit, image: ImageField = None, photo: PhotoField = None):
    """Which breeds, in what shares, best explain the dog; a typical photo of each parent."""
    served.require_store()
    return served.ancestry(take_photo(served, limit, image, photo))


@router.post(
    "/mix",
    response_model=schemas.MixResult,
    responses=PHOTO_ERRORS | BREED_ERRORS,
    tags=["mix"],
)
def mix(
    served: Served,
    limit: Limit,
    a: EndField = None,
    b: EndField = None,
    image_a: ImageField = None,
    image_b: ImageField = None,
    steps: Annotated[int, Form(ge=2, le=MAX_STEPS)] = 8,
    t: Annotated[float | None, Form(ge=0.0, le=1.0, description="one mix only")] = None,
    method: Annotated[Method, Form()] = "lerp",
    breed_as: Annotated[BreedAs, Form()] = "medoid",
):
    """Mix two photos, two breeds or one of each: the strip from a to b (or the one mix at
    `t`), with the URLs that decode single frames by `ref`, without encoding again."""
    ends = []
    for text, image, side in ((a, image_a, "a"), (b, image_b, "b")):
        if image is not None:
            ends.append(served.mix_end(take_photo(served, limit, image, text).ref))
        elif text:
            ends.append(served.mix_end(text, breed_as))
        else:
            raise ApiProblem(
                422, "invalid_request", f"no `{side}`: give a breed, a photo ref or `image_{side}`"
            )
    ts = [t] if t is not None else [i / (steps - 1) for i in range(steps)]
    frames = served.mix_frames(ends[0], ends[1], ts, method)
    query = {"a": ends[0].ref, "b": ends[1].ref, "method": method, "breed_as": breed_as}
    return {
        "a": mix_end_out(ends[0]),
        "b": mix_end_out(ends[1]),
        "method": method,
        "breed_as": breed_as,
        "t": ts,
        "frames": [data_url(f) for f in frames],
        "frame_url": f"{router.prefix}/mix/frame.png?{urlencode(query)}",
        "strip_url": f"{router.prefix}/mix/strip.png?{urlencode({**query, 'steps': steps})}",
    }


def mix_end_out(end: MixEnd) -> dict:
    return {
        "ref": end.ref,
        "label": end.label,
        "kind": end.kind,
        "image": data_url(end.pixels) if end.pixels is not None else None,
    }


@router.get("/mix/frame.png", response_class=Response, responses=PNG | BREED_ERRORS, tags=["mix"])
def mix_frame(
    served: Served,
    a: str,
    b: str,
    t: Annotated[float, Query(ge=0.0, le=1.0)] = 0.5,
    method: Method = "lerp",
    breed_as: BreedAs = "medoid",
):
    """One mix as a PNG: the slider's frame. Decodes one latent; encodes nothing."""
    ends = served.mix_end(a, breed_as), served.mix_end(b, breed_as)
    frame = served.mix_frames(*ends, [t], method)[0]
    return Response(png_bytes(frame), media_type="image/png", headers=NO_STORE)


@router.get("/mix/strip.png", response_class=Response, responses=PNG | BREED_ERRORS, tags=["mix"])
def mix_strip(
    served: Served,
    a: str,
    b: str,
    steps: Annotated[int, Query(ge=2, le=MAX_STEPS)] = 8,
    method: Method = "lerp",
    breed_as: BreedAs = "medoid",
):
    """The captioned strip from a to b as one PNG, to save."""
    end_a, end_b = served.mix_end(a, breed_as), served.mix_end(b, breed_as)
    picture = served.mix_strip(end_a, end_b, steps, method)
    name = f"dogvae-mix-{_slug(end_a.label)}-{_slug(end_b.label)}.png"
    headers = {**NO_STORE, "Content-Disposition": _attachment(name)}
    return Response(png_bytes(picture), media_type="image/png", headers=headers)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-")[:40] or "dog"


def _attachment(name: str) -> str:
    """A Content-Disposition header for `name`: headers are Latin-1, so a name with other
    letters ("狗.jpg") goes as RFC 5987's `filename*`, after an ASCII fallback."""
    fallback = "".join(c if c.isascii() else "_" for c in name)
    if fallback == name:
        return f'attachment; filename="{name}"'
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name)}"


@router.get("/sample", response_model=schemas.SampleResult, responses=BREED_ERRORS, tags=["sample"])
def sample(
    served: Served,
    n: Annotated[int, Query(ge=1, le=MAX_SAMPLES)] = 8,
    temperature: Annotated[float, Query(ge=0.0, le=3.0)] = 1.0,
    seed: Annotated[int | None, Query(ge=0, lt=2**32, description="random if left out")] = None,
    breed: Annotated[str | None, Query(description="sample around this breed")] = None,
    source: Annotated[
        Source, Query(description="codes from the training codes' mixture, or the prior")
    ] = DEFAULT_SOURCE,
):
    """New dogs from a Gaussian mixture fitted to the training codes (gmm) or the prior
    N(0, I), or around a breed; a seed repeats them."""
    return served.sample(n, temperature, seed, breed, source)
