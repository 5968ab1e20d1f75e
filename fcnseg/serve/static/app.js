// The fcnseg page: send the chosen image to POST /v1/segment and show the input, the overlay (the label map
// stacked over the input at the slider's opacity) and the label map, with a legend of class shares.
"use strict";

const $ = (id) => document.getElementById(id);
let model = null;          // GET /v1/model
let inputUrl = null;       // object URL of the chosen file
let requestNumber = 0;     // answers to older requests are ignored

function hexColor([r, g, b]) {
  return "#" + [r, g, b].map((v) => v.toString(16).padStart(2, "0")).join("");
}

function megabytes(bytes) {
  return (bytes / 1e6).toFixed(1).replace(/\.0$/, "") + " MB";
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function setOpacity() {
  const percent = Number($("opacity").value);
  $("opacity-value").textContent = percent + "%";
  $("overlay-labels").style.opacity = String(percent / 100);
}

// One legend row a class of the model, present classes first (largest share first).
function renderLegend(present) {
  const shares = new Map((present || []).map((c) => [c.index, c.share]));
  const classes = model ? model.classes.slice() : (present || []).slice();
  classes.sort((a, b) => (shares.get(b.index) || 0) - (shares.get(a.index) || 0) || a.index - b.index);
  const legend = $("legend");
  legend.replaceChildren();
  for (const c of classes) {
    const item = document.createElement("li");
    const share = shares.get(c.index);
    if (present && !share) item.classList.add("absent");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.backgroundColor = hexColor(c.color);
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = c.name;
    const value = document.createElement("span");
    value.className = "share";
    value.textContent = !present ? "" : share && share < 0.0005 ? "<0.1%" : (100 * (share || 0)).toFixed(1) + "%";
    item.append(swatch, name, value);
    legend.append(item);
  }
}

async function loadModel() {
  try {
    const answer = await fetch("/v1/model");
    model = await answer.json();
    $("model-name").textContent = `${model.name}: ${model.num_classes} classes`;
    const limits = model.limits;
    $("limits").textContent = `PNG, JPEG, WebP, BMP, GIF or TIFF; up to ${megabytes(limits.max_upload_bytes)} and ` +
      `${(limits.max_pixels / 1e6).toFixed(1).replace(/\.0$/, "")} megapixels.`;
    renderLegend(null);
  } catch (error) {
    $("model-name").textContent = "Could not load the model description.";
  }
}

async function segment(file) {
  const number = ++requestNumber;
  showError("");
  $("status").textContent = `Segmenting ${file.name}\u2026`;
  if (inputUrl) URL.revokeObjectURL(inputUrl);
  inputUrl = URL.createObjectURL(file);
  const form = new FormData();
  form.append("image", file);
  const sent = performance.now();
  let answer, body;
  try {
    answer = await fetch("/v1/segment", { method: "POST", body: form });
    body = await answer.json();
  } catch (error) {
    if (number !== requestNumber) return;
    $("status").textContent = "";
    showError(`Could not reach the server (${error.message}).`);
    return;
  }
  if (number !== requestNumber) return;
  if (!answer.ok) {
    $("status").textContent = "";
    showError(`Error ${answer.status}: ${body.error || answer.statusText}`);
    return;
  }
  const roundTrip = performance.now() - sent;
  const labels = "data:image/png;base64," + body.label_png;
  $("input-image").src = inputUrl;
  $("overlay-photo").src = inputUrl;
  $("overlay-labels").src = labels;
  $("label-image").src = labels;
  $("results").hidden = false;
  const t = body.timing_ms;
  $("status").textContent = `${file.name}, ${body.width}\u00d7${body.height}: segmented in ${t.total} ms on the ` +
    `server (inference ${t.inference} ms), ${Math.round(roundTrip)} ms round trip.`;
  $("status").dataset.totalMs = t.total;
  renderLegend(body.classes);
}

function setUp() {
  $("opacity").addEventListener("input", setOpacity);
  setOpacity();
  $("file").addEventListener("change", () => {
    if ($("file").files.length) segment($("file").files[0]);
  });
  const zone = $("drop-zone");
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  document.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) zone.classList.remove("dragging");
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) segment(file);
  });
  loadModel();
}

setUp();
