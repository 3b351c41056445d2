"use strict";
// The page of `imagerec serve`: sends the chosen or dropped images to /v1/predict and shows each result.
// No framework and nothing from elsewhere, so it works offline and under the page's Content-Security-Policy.

const $ = (id) => document.getElementById(id);
let model = null;

function element(tag, attributes = {}, text = "") {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text) node.textContent = text;
  return node;
}

function authHeaders() {
  const key = $("key").value.trim();
  return key ? { Authorization: "Bearer " + key } : {};
}

function needKey(message) {
  $("key-row").hidden = false;
  $("model").textContent = message;
}

async function loadModel() {
  const response = await fetch("/v1/model", { headers: authHeaders() });
  if (response.status === 401) return needKey("This server needs an API key: enter it below, then choose images.");
  model = await response.json();
  $("model").textContent = `${model.task} · ${model.model} · ${model.classes.length} classes · runtime ${model.runtime}`;
}

function colour(label) {
  const index = model ? model.classes.indexOf(label) : -1;
  return index >= 0 ? model.colours[index] : "#E69F00";
}

function percent(p) {
  return (100 * p).toFixed(1) + "%";
}

function probabilities(result) {
  const list = element("ol", { class: "labels", "aria-label": "labels, most probable first" });
  result.labels.forEach((label, i) => {
    const item = element("li");
    const meter = element("meter", { min: "0", max: "1", value: String(result.probs[i]) });
    item.append(element("span", { class: "label" }, label), element("span", { class: "prob" }, percent(result.probs[i])), meter);
    list.append(item);
  });
  return list;
}

function objects(result) {
  const list = element("ul", { class: "objects", "aria-label": "objects found" });
  if (!result.objects.length) list.append(element("li", {}, "no object found"));
  for (const found of result.objects) {
    const item = element("li");
    const swatch = element("span", { class: "swatch", "aria-hidden": "true" });
    swatch.style.background = colour(found.label);
    const box = found.box.map((v) => Math.round(v)).join(", ");
    item.append(swatch, element("span", { class: "object" }, `${found.label} ${percent(found.score)} at (${box})`));
    list.append(item);
  }
  return list;
}

function legend(result) {
  const total = Object.values(result.areas).reduce((a, b) => a + b, 0) || 1;
  const list = element("ul", { class: "legend", "aria-label": "classes on the image" });
  const present = Object.entries(result.areas).filter(([, n]) => n > 0).sort((a, b) => b[1] - a[1]);
  for (const [name, pixels] of present) {
    const item = element("li");
    const swatch = element("span", { class: "swatch", "aria-hidden": "true" });
    swatch.style.background = colour(name);
    item.append(swatch, element("span", { class: "class" }, `${name} ${percent(pixels / total)} of pixels`));
    list.append(item);
  }
  return list;
}

function picture(source, alt) {
  return element("img", { src: source, alt });
}

function boxes(file, result) {
  // Boxes are in the image's own pixels; small images are enlarged so that labels stay legible.
  const canvas = element("canvas", { role: "img", "aria-label": `${result.source} with ${result.objects.length} boxes` });
  const image = new Image();
  image.onload = () => {
    const scale = Math.max(1, Math.ceil(320 / Math.max(image.naturalWidth, image.naturalHeight)));
    canvas.width = image.naturalWidth * scale;
    canvas.height = image.naturalHeight * scale;
    const context = canvas.getContext("2d");
    context.imageSmoothingEnabled = false;
    context.drawImage(image, 0, 0, canvas.width, canvas.height);
    context.lineWidth = Math.max(2, canvas.width / 200);
    context.font = `${Math.max(12, Math.round(canvas.width / 30))}px sans-serif`;
    for (const found of result.objects) {
      const [x1, y1, x2, y2] = found.box.map((v) => v * scale);
      context.strokeStyle = context.fillStyle = colour(found.label);
      context.strokeRect(x1, y1, x2 - x1, y2 - y1);
      context.fillText(`${found.label} ${found.score.toFixed(2)}`, x1 + 2, Math.max(y1 - 3, 12));
    }
    URL.revokeObjectURL(image.src);
  };
  image.src = URL.createObjectURL(file);
  return canvas;
}

function card(result, file) {
  const article = element("article", { class: "result" });
  article.append(element("h3", {}, result.source));
  if (result.error) {
    article.append(element("p", { class: "error" }, result.error));
    return article;
  }
  const figure = element("div", { class: "figure" });
  const details = element("div", { class: "details" });
  if (result.probs) {
    figure.append(picture(URL.createObjectURL(file), result.source));
    details.append(probabilities(result));
  } else if (result.overlay) {
    figure.append(picture(result.overlay, `${result.source} with its masks drawn`));
    details.append(result.areas ? legend(result) : objects(result));
  } else {
    figure.append(boxes(file, result));
    details.append(objects(result));
  }
  article.append(figure, details);
  return article;
}

async function predict(files) {
  files = Array.from(files);
  if (!files.length) return;
  if (!model) await loadModel();
  const form = new FormData();
  files.forEach((file) => form.append("files", file, file.name));
  const status = $("status");
  status.className = "";
  status.textContent = `Predicting ${files.length} image${files.length > 1 ? "s" : ""}…`;
  const started = performance.now();
  let response, body;
  try {
    response = await fetch("/v1/predict?overlay=1", { method: "POST", body: form, headers: authHeaders() });
    body = await response.json();
  } catch (error) {
    status.className = "error";
    status.textContent = `Error: ${error.message}`;
    return;
  }
  if (!response.ok) {
    status.className = "error";
    status.textContent = `Error: ${body.error || response.status}`;
    if (response.status === 401) needKey("This server needs an API key: enter it below, then choose images again.");
    return;
  }
  const roundTrip = performance.now() - started;
  status.textContent = `Latency: ${body.latency_ms.toFixed(1)} ms on the server, ${roundTrip.toFixed(0)} ms round trip`;
  $("results").replaceChildren(...body.results.map((result, i) => card(result, files[i])));
}

function setUp() {
  const pick = $("pick");
  $("files").addEventListener("change", (event) => predict(event.target.files));
  for (const name of ["dragenter", "dragover"]) {
    pick.addEventListener(name, (event) => { event.preventDefault(); pick.classList.add("dragging"); });
  }
  pick.addEventListener("dragleave", () => pick.classList.remove("dragging"));
  pick.addEventListener("drop", (event) => {
    event.preventDefault();
    pick.classList.remove("dragging");
    predict(event.dataTransfer.files);
  });
  // A file dropped beside the box must not make the browser leave the page to show it.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  $("key").addEventListener("change", () => { model = null; loadModel(); });
  loadModel();
}

setUp();
