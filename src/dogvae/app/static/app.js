// dogvae's page: plain JavaScript over the JSON API, nothing loaded from elsewhere.
// A photo is uploaded once (POST /api/photos); every later question names it by its ref.
// The mix slider fetches one decoded frame at a time and never queues more than one.

const $ = (selector, root = document) => root.querySelector(selector);

const state = {
  card: null,
  storeOn: false,
  maxBytes: 20e6,
  ends: { a: null, b: null }, // {ref, label, kind, image}
  active: "a",
  frameUrl: null,
  t: 0.5,
  mixGeneration: 0,
  dogGeneration: 0,
};

class Problem extends Error {
  constructor(message, reason, status) {
    super(message);
    this.reason = reason;
    this.status = status;
  }
}

async function problemOf(response) {
  try {
    const body = await response.json();
    return new Problem(body.error || response.statusText, body.reason || "http_error", response.status);
  } catch {
    return new Problem(`the server answered ${response.status} ${response.statusText}`, "http_error", response.status);
  }
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, options);
  } catch {
    throw new Problem("the server cannot be reached: is `dogvae serve` still running?", "network", 0);
  }
  if (!response.ok) throw await problemOf(response);
  return response.json();
}

function postForm(path, fields) {
  const form = new FormData();
  for (const [name, value] of Object.entries(fields)) {
    if (value !== undefined && value !== null) form.append(name, value);
  }
  return api(path, { method: "POST", body: form });
}

const breedName = (name) => (name || "").replaceAll("_", " ");
const percent = (p) => `${(100 * p).toFixed(p < 0.1 ? 1 : 0)}%`;
const megabytes = (n) => `${(n / 1e6).toFixed(n >= 1e7 ? 0 : 1)} MB`;
const stem = (name) => (name || "photo").replace(/\.[^.]+$/, "");

function show(element, text) {
  element.textContent = text;
  element.hidden = !text;
}

function image(src, alt = "", className = "") {
  const img = document.createElement("img");
  img.src = src;
  img.alt = alt;
  if (className) img.className = className;
  return img;
}

function tooBig(file) {
  if (file.size > state.maxBytes) {
    return `${file.name} is ${megabytes(file.size)}; photos up to ${megabytes(state.maxBytes)} are accepted`;
  }
  return null;
}

// --- your dog ------------------------------------------------------------------------------

async function handleDogFile(file) {
  const error = $("#dog-error");
  show(error, "");
  const refusal = tooBig(file);
  if (refusal) return show(error, refusal);
  const generation = ++state.dogGeneration;
  const preview = $("#drop-preview");
  if (preview.dataset.url) URL.revokeObjectURL(preview.dataset.url);
  preview.dataset.url = URL.createObjectURL(file);
  preview.src = preview.dataset.url;
  preview.hidden = false;
  $("#dog").classList.add("busy");
  let photo;
  try {
    photo = (await postForm("/api/photos", { image: file })).photo;
  } catch (problem) {
    $("#dog").classList.remove("busy");
    return show(error, problem.message);
  }
  if (generation !== state.dogGeneration) return;
  showDog(photo, generation);
  setEnd("a", { ref: photo.ref, label: stem(photo.name), kind: "photo", image: photo.image });
  setActive("b");
}

function showDog(photo, generation) {
  $("#dog-result").hidden = false;
  $("#dog-photo").src = photo.image;
  $("#dog-recon").removeAttribute("src");
  $("#dog-psnr").textContent = "";
  const topBreed = $("#top-breed");
  topBreed.dataset.state = "pending";
  topBreed.classList.remove("unlike");
  topBreed.textContent = "…";
  $("#breed-bars").replaceChildren();
  $("#parents").replaceChildren();
  show($("#ancestry-line"), "");
  const current = () => generation === state.dogGeneration;
  const failed = (problem) => current() && show($("#dog-error"), problem.message);
  const asks = [
    postForm("/api/reconstruct", { photo: photo.ref }).then((r) => current() && showReconstruction(r), failed),
  ];
  if (state.storeOn) {
    asks.push(postForm("/api/identify", { photo: photo.ref }).then((r) => current() && showBreeds(r), failed));
    asks.push(postForm("/api/ancestry", { photo: photo.ref }).then((r) => current() && showAncestry(r), failed));
  } else {
    topBreed.textContent = "—";
    topBreed.dataset.state = "off";
    const badge = $("#ood");
    badge.className = "badge off";
    badge.textContent = "breed questions are off";
    show($("#ancestry-line"), "Breed questions are off: see the note at the top of the page.");
  }
  Promise.allSettled(asks).then(() => current() && $("#dog").classList.remove("busy"));
}

function showReconstruction(result) {
  $("#dog-recon").src = result.reconstruction;
  $("#dog-psnr").textContent = `· ${result.psnr.toFixed(1)} dB`;
}

function showBreeds(result) {
  const topBreed = $("#top-breed");
  const unlike = result.novelty.unlike_training_dogs;
  topBreed.textContent = unlike ? "unlike any training dog" : breedName(result.breed);
  topBreed.classList.toggle("unlike", unlike);
  topBreed.dataset.breed = result.breed || "";
  topBreed.dataset.state = "done";
  const badge = $("#ood");
  badge.className = `badge ${unlike ? "out" : "in"}`;
  badge.textContent = unlike
    ? "out of distribution: the breeds below are a guess"
    : "looks like the dogs it was trained on";
  badge.title = `novelty ${result.novelty.score?.toFixed(2)} (flagged above ${result.novelty.threshold?.toFixed(2)}, the 96th percentile of validation dogs)`;
  const bars = result.top.map(({ breed, probability, image: photo }) => {
    const row = document.createElement("li");
    const thumb = image(photo, `${breedName(breed)}: a typical training dog`, "thumb");
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = breedName(breed);
    name.title = breed;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = `${(100 * probability).toFixed(1)}%`;
    track.append(fill);
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = percent(probability);
    row.append(thumb, name, track, pct);
    return row;
  });
  $("#breed-bars").replaceChildren(...bars);
  $("#probe-line").textContent = identifierLine(result.source, result.accuracy) + (result.note ? ` Note: ${result.note}.` : "");
}

function identifierLine(source, accuracy) {
  const who = source === "classifier" ? "The model's breed classifier" : "A probe on the latent code";
  const loss = typeof accuracy.log_loss === "number" ? `, log loss ${accuracy.log_loss.toFixed(2)}` : "";
  return `${who}: ${percent(accuracy.top1 ?? 0)} top-1, ${percent(accuracy.top5 ?? 0)} top-5 on ${accuracy.n_val} validation dogs${loss} (chance ${percent(accuracy.chance_top1)}).`;
}

function showAncestry(result) {
  const tiles = result.parents.map((parent) => {
    const figure = document.createElement("figure");
    figure.className = "parent";
    figure.append(image(parent.image, `${breedName(parent.breed)}: a typical training dog`, "tile"));
    const caption = document.createElement("figcaption");
    caption.innerHTML = `<span class="share"></span><span class="name"></span>`;
    caption.firstChild.textContent = percent(parent.share);
    caption.lastChild.textContent = breedName(parent.breed);
    figure.append(caption);
    return figure;
  });
  if (result.parents.length > 1) {
    const mixture = document.createElement("figure");
    mixture.className = "parent mixture";
    mixture.append(image(result.mixture, "the parents mixed", "tile"));
    const caption = document.createElement("figcaption");
    caption.innerHTML = `<span class="share">=</span><span class="name">their mix</span>`;
    mixture.append(caption);
    tiles.push(mixture);
  }
  $("#parents").replaceChildren(...tiles);
  const verdict = result.parents.length === 1 ? "Explained as one breed." : `Explained as a mix of ${result.parents.length} breeds.`;
  const caveat = result.novelty.unlike_training_dogs ? " This photo is unlike the training dogs, so take the shares lightly." : "";
  show($("#ancestry-line"), `${verdict} Closest breeds: ${result.ranking.map(breedName).join(", ")}.${caveat}`);
}

// --- mixing --------------------------------------------------------------------------------

function setActive(side) {
  state.active = side;
  for (const s of ["a", "b"]) $(`#end-${s}`).classList.toggle("active", s === side);
}

function renderEnd(side) {
  const end = state.ends[side];
  const box = $(`#end-${side}`);
  const img = $(".end-img", box);
  $(".end-label", box).textContent = end ? end.label : "pick a dog";
  $(".end-label", box).classList.toggle("is-breed", Boolean(end && end.kind !== "photo"));
  $(".end-label", box).title = end ? end.ref : "";
  $(".breed-select", box).value = end && end.kind === "breed" ? end.ref.slice("breed:".length) : "";
  if (end && end.image) {
    img.src = end.image;
    img.hidden = false;
  } else {
    img.hidden = true;
  }
  $(".end-empty", box).hidden = !img.hidden;
}

function setEnd(side, end) {
  state.ends[side] = end;
  renderEnd(side);
  remix();
}

async function remix() {
  const { a, b } = state.ends;
  const error = $("#mix-error");
  if (!a || !b) return;
  const generation = ++state.mixGeneration;
  const steps = Math.min(16, Math.max(2, Number($("#mix-steps").value) || 8));
  let result;
  try {
    result = await postForm("/api/mix", {
      a: a.ref, b: b.ref, steps, method: $("#mix-method").value, breed_as: $("#mix-breed-as").value,
    });
  } catch (problem) {
    if (generation === state.mixGeneration) show(error, problem.message);
    return;
  }
  if (generation !== state.mixGeneration) return;
  show(error, "");
  // a breed end is shown as its decoded point: the strip's first or last frame
  for (const [side, end, frame] of [["a", result.a, result.frames[0]], ["b", result.b, result.frames.at(-1)]]) {
    state.ends[side] = { ...state.ends[side], ref: end.ref, image: end.image || frame };
    renderEnd(side);
  }
  const strip = result.frames.map((src, i) => {
    const img = image(src, `t = ${result.t[i].toFixed(2)}`);
    img.dataset.t = result.t[i];
    img.addEventListener("click", () => moveSlider(result.t[i]));
    return img;
  });
  $("#strip").replaceChildren(...strip);
  const save = $("#save-strip");
  save.href = result.strip_url;
  save.hidden = false;
  state.frameUrl = result.frame_url;
  $("#mix-t").disabled = false;
  highlightStrip();
  showFrame(state.t, true);
}

function moveSlider(t) {
  $("#mix-t").value = t;
  state.t = Number(t);
  highlightStrip();
  showFrame(state.t);
}

function highlightStrip() {
  const frames = [...$("#strip").children];
  let nearest = null;
  for (const img of frames) {
    if (!nearest || Math.abs(img.dataset.t - state.t) < Math.abs(nearest.dataset.t - state.t)) nearest = img;
  }
  for (const img of frames) img.classList.toggle("near", img === nearest);
}

const frameLoader = { busy: false, pending: null };

async function showFrame(t, force = false) {
  if (!state.frameUrl) return;
  if (frameLoader.busy) {
    frameLoader.pending = { t, force: force || frameLoader.pending?.force };
    return;
  }
  frameLoader.busy = true;
  const url = `${state.frameUrl}&t=${t.toFixed(3)}`;
  const started = performance.now();
  try {
    const response = await fetch(url);
    if (!response.ok) throw await problemOf(response);
    const blob = await response.blob();
    const frame = $("#mix-frame");
    const previous = frame.dataset.url;
    frame.dataset.url = URL.createObjectURL(blob);
    await new Promise((resolve) => {
      frame.onload = frame.onerror = resolve;
      frame.src = frame.dataset.url;
    });
    if (previous) URL.revokeObjectURL(previous);
    frame.dataset.src = url;
    frame.dataset.t = t.toFixed(2);
    const ms = performance.now() - started;
    $("#t-readout").textContent = `t = ${t.toFixed(2)} · ${ms.toFixed(0)} ms`;
    show($("#mix-error"), "");
  } catch (problem) {
    show($("#mix-error"), problem.message);
  } finally {
    frameLoader.busy = false;
  }
  const next = frameLoader.pending;
  frameLoader.pending = null;
  if (next) showFrame(next.t, next.force);
}

async function uploadEnd(side, file) {
  const error = $("#mix-error");
  const refusal = tooBig(file);
  if (refusal) return show(error, refusal);
  try {
    const { photo } = await postForm("/api/photos", { image: file });
    setEnd(side, { ref: photo.ref, label: stem(photo.name), kind: "photo", image: photo.image });
    setActive(side === "a" ? "b" : "a");
  } catch (problem) {
    show(error, problem.message);
  }
}

async function loadGallery() {
  let result;
  try {
    result = await api("/api/gallery");
  } catch (problem) {
    return show($("#gallery-note"), problem.message);
  }
  if (!result.images.length) {
    const why = state.storeOn ? "no validation dogs to show" : "the gallery's dogs come from the latent store, which is off (see the note at the top)";
    show($("#gallery-note"), why);
  }
  else if (result.images[0].decoded) show($("#gallery-note"), "The data folder is not readable: these are the dogs' reconstructions.");
  const buttons = result.images.map((dog) => {
    const button = document.createElement("button");
    button.type = "button";
    button.title = `${breedName(dog.breed)} (${dog.id})`;
    button.append(image(dog.image, breedName(dog.breed)));
    button.addEventListener("click", () => {
      const side = state.active;
      setEnd(side, { ref: dog.ref, label: breedName(dog.breed), kind: "gallery", image: dog.image });
      setActive(side === "a" ? "b" : "a");
    });
    return button;
  });
  $("#gallery").replaceChildren(...buttons);
}

// --- new dogs ------------------------------------------------------------------------------

async function drawSamples() {
  const query = new URLSearchParams({
    n: 12, temperature: $("#sample-temperature").value, seed: $("#sample-seed").value || 0,
    source: $("#sample-source").value,
  });
  const breed = $("#sample-breed").value;
  if (breed) query.set("breed", breed);
  try {
    const result = await api(`/api/sample?${query}`);
    show($("#sample-error"), "");
    const from = { gmm: "the training codes' mixture", prior: "the prior", breed: "the breed's spread" }[result.sampler];
    const what = ["gmm", "prior"].includes(result.source) ? `a dog from ${from}` : `a ${breedName(result.source)} from ${from}`;
    $("#samples").replaceChildren(...result.images.map((src) => image(src, what)));
  } catch (problem) {
    show($("#sample-error"), problem.message);
  }
}

// --- the model's card ----------------------------------------------------------------------

function fact(term, value) {
  if (value === undefined || value === null || value === "") return [];
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  dd.textContent = value;
  return [dt, dd];
}

function renderCard(card) {
  const data = card.data || {};
  const metrics = card.metrics || {};
  const val = metrics.val || {};
  const baselines = metrics.baselines || {};
  const probe = card.probe;
  const fixed = (x, digits) => (typeof x === "number" ? x.toFixed(digits) : null);
  const rows = [
    fact("preset", card.preset),
    fact("shape", `${card.image_size} px images, ${card.latent_dim}-d latent, ${card.parameters.toLocaleString()} parameters, ${card.likelihood} likelihood`),
    fact("trained on", data.n_images ? `${data.n_images.toLocaleString()} images of ${data.n_breeds} breeds (${data.layout} layout, ${data.crop || card.crop} crop)` : null),
    fact("data folder", data.root),
    fact("epochs", metrics.epochs ? `${metrics.epochs} (best: ${metrics.best_epoch})` : card.epoch),
    fact("validation ELBO", val.elbo !== undefined ? `${fixed(val.elbo, 1)} nats/image (${fixed(val.bits_per_dim, 3)} bits/dim)` : null),
    fact("reconstruction", val.psnr !== undefined ? `${fixed(val.psnr, 2)} dB PSNR; mean image ${fixed(baselines.mean_image_psnr, 2)} dB, PCA-${baselines.pca_components} ${fixed(baselines.pca_psnr, 2)} dB` : null),
    fact("active latent units", val.active_units !== undefined ? `${val.active_units} of ${card.latent_dim}` : null),
    fact("breed answers", card.identifier ? identifierLine(card.identifier.source, card.identifier) : null),
    fact("breed probe", probe ? `${probe.chosen}: ${percent(probe[probe.chosen]?.top1 ?? 0)} top-1, ${percent(probe[probe.chosen]?.top5 ?? 0)} top-5 (chance ${percent(probe.chance_top1)})` : null),
    fact("latent store", card.store.available ? `${card.store.n_images} dogs encoded (${card.store.n_val} held out)` : "off"),
    fact("breeds", card.breeds.map(breedName).join(", ")),
    fact("versions", Object.entries(card.versions || {}).map(([k, v]) => `${k} ${v}`).join(", ")),
  ];
  $("#model-card").replaceChildren(...rows.flat());
  if (!metrics.val) $("#model-card").append(...fact("metrics", "metrics.json not found in the run"));
}

// --- wiring --------------------------------------------------------------------------------

function firstImage(fileList) {
  return [...(fileList || [])].find((f) => f.type.startsWith("image/") || !f.type) || (fileList || [])[0];
}

function wire() {
  const drop = $("#drop");
  $("#photo-input").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) handleDogFile(file);
    event.target.value = "";
  });
  for (const name of ["dragenter", "dragover"]) {
    window.addEventListener(name, (event) => event.preventDefault());
    drop.addEventListener(name, () => drop.classList.add("over"));
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = firstImage(event.dataTransfer.files);
    if (!file) return;
    const end = event.target.closest?.(".end");
    if (end) uploadEnd(end.dataset.side, file);
    else handleDogFile(file);
  });
  window.addEventListener("paste", (event) => {
    const file = firstImage(event.clipboardData?.files);
    if (file) handleDogFile(file);
  });

  for (const side of ["a", "b"]) {
    const box = $(`#end-${side}`);
    box.addEventListener("click", () => setActive(side));
    $(".breed-select", box).addEventListener("change", (event) => {
      const breed = event.target.value;
      if (!breed) return;
      setEnd(side, { ref: `breed:${breed}`, label: breedName(breed), kind: "breed", image: null });
      setActive(side === "a" ? "b" : "a");
    });
    $("input[type=file]", box).addEventListener("change", (event) => {
      const file = event.target.files[0];
      if (file) uploadEnd(side, file);
      event.target.value = "";
    });
  }
  $("#mix-t").addEventListener("input", (event) => moveSlider(Number(event.target.value)));
  for (const id of ["#mix-method", "#mix-breed-as", "#mix-steps"]) $(id).addEventListener("change", remix);

  $("#sample-button").addEventListener("click", () => {
    $("#sample-seed").value = Math.floor(Math.random() * 2 ** 31);
    drawSamples();
  });
  $("#sample-temperature").addEventListener("input", (event) => {
    $("#temperature-readout").textContent = Number(event.target.value).toFixed(1);
  });
  for (const id of ["#sample-temperature", "#sample-seed", "#sample-breed", "#sample-source"]) $(id).addEventListener("change", drawSamples);
}

function fillBreeds(breeds) {
  for (const select of document.querySelectorAll(".breed-select, #sample-breed")) {
    for (const breed of breeds) {
      const option = document.createElement("option");
      option.value = breed;
      option.textContent = breedName(breed);
      select.append(option);
    }
    select.disabled = !state.storeOn;
    if (!state.storeOn) select.title = "breed questions are off: see the note at the top";
  }
}

async function init() {
  wire();
  setActive("a");
  let card;
  try {
    card = await api("/api/model");
  } catch (problem) {
    $("#run-line").textContent = problem.message;
    return;
  }
  state.card = card;
  state.storeOn = card.store.available;
  state.maxBytes = card.limits.max_upload_bytes;
  $("#run-line").textContent = `${card.run} · ${card.preset || "custom"} · ${card.image_size} px · ${card.breeds.length} breeds`;
  $("#limit-line").textContent = `JPEG, PNG, WebP… up to ${megabytes(card.limits.max_upload_bytes)} and ${card.limits.max_pixels / 1e6} megapixels`;
  document.title = `dogvae · ${card.run}`;
  if (!state.storeOn) show($("#store-banner"), card.store.message);
  fillBreeds(card.breeds);
  renderCard(card);
  $("#sample-seed").value = 0;
  if (!state.storeOn) $("#sample-source").value = "prior"; // the mixture is fitted on the store
  drawSamples();
  loadGallery();
  if (state.storeOn && card.breeds.length >= 2) {
    state.ends.a = { ref: `breed:${card.breeds[0]}`, label: breedName(card.breeds[0]), kind: "breed", image: null };
    state.ends.b = { ref: `breed:${card.breeds[1]}`, label: breedName(card.breeds[1]), kind: "breed", image: null };
    renderEnd("a");
    renderEnd("b");
    remix();
  }
}

init();
