// The playground page: pick image(s), ask, draw what POST /api/answer returns.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const ATTENDED = 5;            // regions highlighted for the whole sentence
const MATRIX_COLUMNS = 12;     // regions shown in the words x regions table
const PER_PAGE = 12;
const RANK_COLOURS = ["#dc2626", "#ea580c", "#d97706", "#65a30d", "#0891b2"];

const state = { info: null, slots: [{}, {}], active: 0, page: 0, result: null, layer: 0, word: null };
const $ = (id) => document.getElementById(id);

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

async function loadInfo() {
  const info = await (await fetch("/api/info")).json();
  state.info = info;
  const what = info.pair ? "NLVR2: two images and a statement; answers True/False" : `${info.task.toUpperCase()}: top answers`;
  $("run-info").textContent = `${what} · model ${info.run} · features ${info.store}` +
    (info.language_only ? " · language-only run (does not look at the image)" : "");
  if (info.pair) {
    document.querySelector('.slot[data-slot="0"] legend').textContent = "Left image";
    document.querySelector('.slot[data-slot="1"]').hidden = false;
    $("question-label").textContent = "Statement";
    $("question").placeholder = "There are two circles.";
  }
  document.querySelectorAll(".slot input[type=file]").forEach((input) => { input.disabled = !info.uploads; });
  if (!info.uploads) setStatus(`uploads are off: ${info.uploads_off}`, true);
  $("question").maxLength = info.limits.question_chars;
  if (info.store_images > 0) {
    $("gallery").hidden = false;
    $("store-count").textContent = info.store_images;
    await loadPage(0);
  }
}

async function loadPage(page) {
  const data = await (await fetch(`/api/images?page=${page}&per_page=${PER_PAGE}`)).json();
  state.page = data.page;
  const pages = Math.max(1, Math.ceil(data.total / data.per_page));
  $("page-label").textContent = `page ${data.page + 1} of ${pages}`;
  $("prev-page").disabled = data.page === 0;
  $("next-page").disabled = data.page + 1 >= pages;
  const thumbs = $("thumbs");
  thumbs.replaceChildren();
  for (const id of data.ids) {
    const button = document.createElement("button");
    button.type = "button";
    button.title = id;
    button.dataset.imageId = id;
    const img = document.createElement("img");
    img.src = `/api/thumbnails/${encodeURIComponent(id)}`;
    img.alt = id;
    img.loading = "lazy";
    button.append(img);
    button.addEventListener("click", () => chooseStoreImage(id));
    thumbs.append(button);
  }
}

function slotCount() { return state.info && state.info.pair ? 2 : 1; }

function activate(index) {
  state.active = index;
  document.querySelectorAll(".slot").forEach((el) => el.classList.toggle("active", Number(el.dataset.slot) === index));
}

function setSlot(index, slot) {
  const old = state.slots[index];
  if (old.url && old.file) URL.revokeObjectURL(old.url);
  state.slots[index] = slot;
  const el = document.querySelector(`.slot[data-slot="${index}"]`);
  el.querySelector(".chosen").textContent = slot.file ? `upload: ${slot.file.name}` : `store image: ${slot.imageId}`;
  if (!slot.file) el.querySelector("input[type=file]").value = "";
  // the next empty slot (NLVR2's right image) is where the next choice goes
  const next = [...Array(slotCount()).keys()].find((i) => !state.slots[i].url);
  activate(next === undefined ? index : next);
}

function chooseStoreImage(id) {
  setSlot(state.active, { imageId: id, url: `/api/images/${encodeURIComponent(id)}` });
}

function chooseFile(index, file) {
  if (!file) return;
  const limit = state.info.limits.upload_bytes;
  if (file.size > limit) {
    setStatus(`${file.name}: ${file.size} bytes; this server takes at most ${limit}`, true);
    return;
  }
  setSlot(index, { file, url: URL.createObjectURL(file) });
}

async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  const form = new FormData();
  form.append("question", question);
  form.append("top", "5");
  for (let i = 0; i < slotCount(); i++) {
    const slot = state.slots[i];
    const suffix = i === 0 ? "" : "2";
    if (slot.file) form.append(`image${suffix}`, slot.file, slot.file.name);
    else if (slot.imageId) form.append(`image_id${suffix}`, slot.imageId);
  }
  $("ask-button").disabled = true;
  setStatus("asking...");
  try {
    const response = await fetch("/api/answer", { method: "POST", body: form });
    const data = await response.json();
    if (!response.ok) { setStatus(data.error || `error ${response.status}`, true); return; }
    state.result = data;
    state.urls = state.slots.slice(0, slotCount()).map((s) => s.url);
    state.layer = data.attention ? data.attention.layers.length - 1 : 0;
    state.word = null;
    render();
    setStatus("");
  } catch (err) {
    setStatus(`no answer: ${err}`, true);
  } finally {
    $("ask-button").disabled = false;
  }
}

function render() {
  const data = state.result;
  $("result").hidden = false;
  const answers = $("answers");
  answers.replaceChildren();
  for (const { answer, score } of data.answers) {
    const li = document.createElement("li");
    li.className = "answer";
    li.innerHTML = '<span class="answer-text"></span><span class="bar"></span><span class="score"></span>';
    li.querySelector(".answer-text").textContent = answer;
    li.querySelector(".bar").style.width = `${Math.round(score * 120)}px`;
    li.querySelector(".score").textContent = score.toFixed(3);
    answers.append(li);
  }
  const names = { decode: "decode + resize", detection: "detection", model: "model", queue: "queue", total: "total" };
  $("timings").textContent = Object.entries(data.timings_ms)
    .map(([k, v]) => `${names[k] || k} ${v.toFixed(0)} ms`).join(" · ");
  const layer = $("layer");
  layer.replaceChildren();
  if (data.attention) {
    data.attention.layers.forEach((_, i) => layer.append(new Option(`${i + 1} of ${data.attention.layers.length}`, i)));
    layer.value = state.layer;
  }
  $("attention-panel").hidden = !data.attention;
  drawFigures();
  drawMatrix();
}

function regionScores() {
  // the sentence's attention over image 0's regions, or one hovered word's
  const att = state.result.attention;
  if (!att) return null;
  if (state.word !== null) return att.layers[state.layer][state.word];
  return att.region_scores[state.layer];
}

function ranked(scores) {
  return scores.map((s, i) => [s, i]).sort((a, b) => b[0] - a[0]).map(([, i]) => i);
}

function drawFigures() {
  const figures = $("figures");
  figures.replaceChildren();
  state.result.images.forEach((image, index) => {
    const figure = document.createElement("figure");
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", `0 0 ${image.width} ${image.height}`);
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", `${image.name} with ${image.regions.length} detected regions`);
    svg.dataset.image = index;
    const picture = document.createElementNS(SVG, "image");
    picture.setAttribute("href", state.urls[index]);
    picture.setAttribute("width", image.width);
    picture.setAttribute("height", image.height);
    svg.append(picture);
    const font = Math.max(image.width, image.height) / 32;
    image.regions.forEach((region, j) => {
      const [x1, y1, x2, y2] = region.box;
      const g = document.createElementNS(SVG, "g");
      g.dataset.region = j;
      const rect = document.createElementNS(SVG, "rect");
      rect.setAttribute("class", "region");
      rect.setAttribute("x", x1); rect.setAttribute("y", y1);
      rect.setAttribute("width", Math.max(1, x2 - x1)); rect.setAttribute("height", Math.max(1, y2 - y1));
      const title = document.createElementNS(SVG, "title");
      title.textContent = `${region.label} (object ${region.object_score.toFixed(2)}, attribute ${region.attribute_score.toFixed(2)})`;
      rect.append(title);
      const text = document.createElementNS(SVG, "text");
      text.setAttribute("class", "region-label");
      text.setAttribute("x", x1 + font * 0.2); text.setAttribute("y", y1 + font);
      text.setAttribute("font-size", font);
      text.textContent = `${region.label} ${region.object_score.toFixed(2)}`;
      g.append(rect, text);
      svg.append(g);
    });
    const caption = document.createElement("figcaption");
    caption.textContent = `${image.from_store ? "store image" : "upload"} ${image.name}: ${image.regions.length} regions` +
      (index === 0 && state.result.attention ? "; coloured: the regions the words attend to most (1 = most)" : "");
    figure.append(svg, caption);
    figures.append(figure);
  });
  highlight();
}

function highlight() {
  const scores = regionScores();
  const every = $("all-labels").checked;
  document.querySelectorAll("#figures svg").forEach((svg) => {
    const order = scores && svg.dataset.image === "0" ? ranked(scores).slice(0, ATTENDED) : [];
    svg.querySelectorAll("g[data-region]").forEach((g) => {
      const j = Number(g.dataset.region);
      const rank = order.indexOf(j);
      const rect = g.querySelector("rect");
      rect.classList.toggle("attended", rank >= 0);
      rect.style.stroke = rank >= 0 ? RANK_COLOURS[rank] : "";
      g.querySelector("text").style.display = rank >= 0 || every || order.length === 0 ? "" : "none";
      if (rank >= 0) svg.append(g);   // drawn last: on top of the others
    });
  });
}

function drawMatrix() {
  const att = state.result.attention;
  const table = $("matrix");
  table.replaceChildren();
  if (!att) return;
  const weights = att.layers[state.layer];
  const columns = ranked(att.region_scores[state.layer]).slice(0, MATRIX_COLUMNS);
  const labels = state.result.images[0].regions;
  const head = table.createTHead().insertRow();
  head.append(document.createElement("th"));
  columns.forEach((j, rank) => {
    const th = document.createElement("th");
    th.textContent = `${rank + 1} ${labels[j].label}`;
    head.append(th);
  });
  // colours span the shown cells' range: an untrained model's near-uniform maps still show their order
  const shown = columns.flatMap((j) => weights.map((row) => row[j]));
  const low = Math.min(...shown), span = Math.max(1e-9, Math.max(...shown) - low);
  const body = table.createTBody();
  att.tokens.forEach((token, t) => {
    const row = body.insertRow();
    const th = document.createElement("th");
    th.textContent = token;
    row.append(th);
    for (const j of columns) {
      const cell = row.insertCell();
      const w = weights[t][j];
      cell.textContent = w.toFixed(2);
      cell.style.background = `rgba(37, 99, 235, ${(0.05 + 0.95 * (w - low) / span).toFixed(3)})`;
      cell.addEventListener("mouseenter", () => hoverRegion(j, true));
      cell.addEventListener("mouseleave", () => hoverRegion(j, false));
    }
    const word = () => { state.word = t; highlight(); };
    row.addEventListener("mouseenter", word);
    row.addEventListener("click", word);
    row.addEventListener("mouseleave", () => { state.word = null; highlight(); });
  });
}

function hoverRegion(j, on) {
  const g = document.querySelector(`#figures svg[data-image="0"] g[data-region="${j}"]`);
  if (g) g.querySelector("rect").classList.toggle("hovered", on);
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll(".slot").forEach((el) => {
    const index = Number(el.dataset.slot);
    el.addEventListener("click", () => activate(index));
    el.querySelector("input[type=file]").addEventListener("change", (e) => chooseFile(index, e.target.files[0]));
  });
  $("prev-page").addEventListener("click", () => loadPage(state.page - 1));
  $("next-page").addEventListener("click", () => loadPage(state.page + 1));
  $("ask-form").addEventListener("submit", ask);
  $("layer").addEventListener("change", (e) => { state.layer = Number(e.target.value); highlight(); drawMatrix(); });
  $("all-labels").addEventListener("change", highlight);
  loadInfo().catch((err) => setStatus(`cannot reach the server: ${err}`, true));
});
