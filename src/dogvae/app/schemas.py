"""The JSON the API answers with, as pydantic models: FastAPI checks every answer against them
and publishes them in the OpenAPI document (`/openapi.json`, browsable at `/docs`).

Pictures are PNG `data:` URLs, small enough at the model's 32-128 px to ride inside the JSON.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Problem(BaseModel):
    """Every error: a sentence for people and a stable key for programs."""

    error: str = Field(description="what went wrong, in a sentence")
    reason: str = Field(
        description="stable key: empty_file, not_an_image, truncated, unreadable, "
        "too_many_pixels, too_large, upload_timeout, missing_photo, unknown_photo, "
        "unknown_breed, no_latent_store, invalid_request, bad_request, not_found, internal"
    )
    detail: Any = None


class PhotoOut(BaseModel):
    ref: str = Field(description="reference to pass as `photo`, `a` or `b` instead of uploading")
    name: str
    image: str = Field(
        description="the photo as the model sees it (cropped, resized), PNG data URL"
    )


class PhotoResult(BaseModel):
    photo: PhotoOut


class BreedProbability(BaseModel):
    breed: str
    probability: float


class BreedAnswer(BreedProbability):
    image: str = Field(description="a typical training photo of the breed, PNG data URL")


class Accuracy(BaseModel, extra="allow"):
    """How the identifier that answered did on the run's validation split."""

    top1: float | None
    top5: float | None
    log_loss: float | None = Field(description="mean -log p(true breed), nats (Kaggle's metric)")
    n_val: int
    chance_top1: float
    chance_top5: float


class Novelty(BaseModel):
    score: float | None
    threshold: float | None
    latent_distance_ratio: float | None
    reconstruction_error_ratio: float | None
    kl_rate_ratio: float | None
    complexity_gap_ratio: float | None
    unlike_training_dogs: bool = Field(
        description="above the 96th percentile of validation dogs' novelty: out of distribution"
    )


class IdentifyResult(BaseModel):
    photo: PhotoOut
    breed: str | None = Field(description="the most likely breed; null when unlike any dog")
    top: list[BreedAnswer] = Field(description="likeliest first; calibrated probabilities")
    source: str = Field(description="classifier (the model's own) or probe (on the codes)")
    accuracy: Accuracy
    note: str | None = Field(description="what to know about where the answer comes from")
    novelty: Novelty
    probe: dict[str, Any] = Field(description="the latent probe and its validation accuracy")
    probe_top: list[BreedProbability] | None = Field(
        None, description="a model with a classifier: what the latent probe says beside it"
    )


class ReconstructResult(BaseModel):
    photo: PhotoOut
    reconstruction: str = Field(description="decoded posterior mean, PNG data URL")
    psnr: float = Field(description="dB, against the photo as the model sees it")


class Parent(BaseModel):
    breed: str
    share: float
    image: str = Field(description="a typical training photo of the breed, PNG data URL")


class AncestryResult(BaseModel):
    photo: PhotoOut
    parents: list[Parent] = Field(description="one to three breeds, shares summing to one")
    mixture: str = Field(description="the dog drawn as the parents' mixture, PNG data URL")
    ranking: list[str]
    residual: float
    method: str = Field(description="synthesis (the decoder's likeliest breed mixture) or latent")
    space: str = Field(description="decoder, classifier (breed probabilities) or codes")
    gain: float | None = Field(description="synthesis: nats better than the best single breed")
    novelty: Novelty


class MixEndOut(BaseModel):
    ref: str = Field(description="pass it back as `a` or `b`; frames need no upload")
    label: str
    kind: str = Field(description="photo, gallery or breed")
    image: str | None = Field(description="the photo itself; null for a breed")


class MixResult(BaseModel):
    a: MixEndOut
    b: MixEndOut
    method: str
    breed_as: str
    t: list[float]
    frames: list[str] = Field(description="decoded mixes at each t, PNG data URLs")
    frame_url: str = Field(description="GET it with &t=... for one frame as PNG")
    strip_url: str = Field(description="GET it for the captioned strip as one PNG")


class SampleResult(BaseModel):
    source: str = Field(description="gmm or prior, or the breed sampled around")
    sampler: str = Field(
        description="where the codes came from: gmm (a mixture fitted to the training codes), "
        "prior (N(0, I)) or breed (a plain VAE's spread around the breed's centroid)"
    )
    n: int
    temperature: float
    seed: int
    images: list[str]


class GalleryDog(BaseModel):
    ref: str
    id: str
    breed: str
    image: str
    decoded: bool = Field(description="a reconstruction: the data folder was not readable")


class GalleryResult(BaseModel):
    images: list[GalleryDog]
    message: str | None


class StoreState(BaseModel, extra="allow"):
    available: bool
    message: str | None


class ModelCard(BaseModel):
    run: str
    preset: str | None
    image_size: int
    latent_dim: int
    likelihood: str
    parameters: int
    crop: str
    breeds: list[str]
    data: dict[str, Any]
    epoch: int | None
    metrics: dict[str, Any] | None = Field(description="metrics.json: validation figures")
    versions: dict[str, str]
    weights_sha256: str | None
    store: StoreState
    probe: dict[str, Any] | None
    identifier: dict[str, Any] | None = Field(
        description="which part of the model answers breed questions, its validation figures"
    )
    limits: dict[str, int]
