// dit-grounding demo page: calls the service's own /segment and /ground endpoints.
"use strict";

const $ = (sel) => document.querySelector(sel);
let imageFile = null;
// The threshold field shows the model's own value (from /info); it is sent only once the user changes it.
let thresholdChanged = false;

// The service's API key, when it has one: typed into the header field, kept for this tab only,
// sent as "Authorization: Bearer <key>" on every call (the page itself is served without a key).
function apiKey() { return ($("#api-key").value || "").trim(); }

function api(route, opts = {}) {
  const headers = new Headers(opts.headers || {});
  const key = apiKey();
  if (key) headers.set("authorization", `Bearer ${key}`);
  return fetch("../" + route, { ...opts, headers });
}

function setStatus(text) { $("#status").textContent = text; }

function showError(text) {
  const el = $("#error");
  el.textContent = text;
  el.hidden = !text;
}

function chooseFile(file) {
  if (!file) return;
  imageFile = file;
  $("#file-name").textContent = `${file.name} (${Math.round(file.size / 1024)} KB)`;
  showError("");
}

function expressions() {
  return $("#expressions").value.split("\n").map((s) => s.trim()).filter((s) => s.length);
}

function formData(extra) {
  const fd = new FormData();
  fd.append("image", imageFile, imageFile.name || "image");
  const exprs = expressions();
  fd.append("expression", exprs.length > 1 ? JSON.stringify(exprs) : (exprs[0] || ""));
  fd.append("magnets", $("#magnets").checked);
  fd.append("sinks", $("#sinks").checked);
  fd.append("sinks_mode", $("#sinks-mode").value);
  fd.append("redistribution", $("#redistribution").checked);
  fd.append("views", $("#views").checked ? "assembled" : "global");
  for (const [k, v] of Object.entries(extra)) fd.append(k, v);
  return fd;
}

async function errorText(resp) {
  const text = await resp.text();
  try {
    const doc = JSON.parse(text);
    if (doc.error) return doc.field ? `${doc.error} [${doc.field}]` : doc.error;
    if (doc.detail) return typeof doc.detail === "string" ? doc.detail : JSON.stringify(doc.detail);
  } catch (e) { /* not JSON */ }
  return text || `HTTP ${resp.status}`;
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser cannot display this image"));
    img.src = src;
  });
}

function pixels(img, w, h) {
  const c = document.createElement("canvas");
  c.width = w; c.height = h;
  const ctx = c.getContext("2d");
  ctx.drawImage(img, 0, 0, w, h);
  return ctx.getImageData(0, 0, w, h);
}

// blue → cyan → yellow → red ramp, the same as the server's overlay
const RAMP = [[0, 0, 128], [0, 160, 255], [60, 255, 190], [255, 230, 0], [220, 20, 0]];
function ramp(v) {
  const x = Math.min(Math.max(v, 0), 1) * (RAMP.length - 1);
  const i = Math.min(Math.floor(x), RAMP.length - 2), f = x - i;
  return RAMP[i].map((c, k) => c * (1 - f) + RAMP[i + 1][k] * f);
}

// one colour per instance
const INSTANCE_COLOURS = [[30, 255, 60], [255, 140, 0], [0, 170, 255], [255, 0, 200], [255, 255, 0], [140, 90, 255]];

async function tint(ctx, w, h, pngB64, rgb) {
  const mask = pixels(await loadImage("data:image/png;base64," + pngB64), w, h);
  const frame = ctx.getImageData(0, 0, w, h);
  for (let p = 0; p < mask.data.length; p += 4) {
    if (mask.data[p] > 127) for (let k = 0; k < 3; k++) frame.data[p + k] = frame.data[p + k] * 0.55 + rgb[k] * 0.45;
  }
  ctx.putImageData(frame, 0, 0);
}

// A mask's boundary, dashed: how a best guess is drawn (never filled like a found object).
async function outline(ctx, w, h, pngB64, rgb, lw) {
  const mask = pixels(await loadImage("data:image/png;base64," + pngB64), w, h);
  const inside = (x, y) => x >= 0 && y >= 0 && x < w && y < h && mask.data[4 * (y * w + x)] > 127;
  const frame = ctx.getImageData(0, 0, w, h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (!inside(x, y) || Math.floor((x + y) / (4 * lw)) % 2) continue;
      let edge = false;
      for (let d = 1; d <= lw && !edge; d++) {
        edge = !inside(x - d, y) || !inside(x + d, y) || !inside(x, y - d) || !inside(x, y + d);
      }
      if (edge) for (let k = 0; k < 3; k++) frame.data[4 * (y * w + x) + k] = rgb[k];
    }
  }
  ctx.putImageData(frame, 0, 0);
}

async function drawOverlay(canvas, photo, result) {
  const [w, h] = [photo.naturalWidth, photo.naturalHeight];
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(photo, 0, 0);
  const lw = Math.max(1, Math.round(Math.max(w, h) / 300));
  const instances = (result.instances || []).filter((i) => i.segmentation && i.segmentation.png);
  if (instances.length) {  // "all instances": each in its own colour, with its box
    for (const [n, inst] of instances.entries()) {
      const rgb = INSTANCE_COLOURS[n % INSTANCE_COLOURS.length];
      await tint(ctx, w, h, inst.segmentation.png, rgb);
      const [x0, y0, x1, y1] = inst.box;
      ctx.strokeStyle = `rgb(${rgb.join(",")})`; ctx.lineWidth = lw;
      ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    }
    canvas.dataset.instances = String(instances.length);
    return;
  }
  if (result.mask_png && result.best_guess) {  // not present: the kept mask is a guess, outlined only
    await outline(ctx, w, h, result.mask_png, [210, 210, 210], lw);
    canvas.dataset.drawn = "best-guess";
  } else if (result.mask_png) {
    await tint(ctx, w, h, result.mask_png, [30, 255, 60]);
    canvas.dataset.drawn = "mask";
  }
  if (result.present) {
    const [x0, y0, x1, y1] = result.box;
    ctx.strokeStyle = "rgb(255,40,40)"; ctx.lineWidth = lw;
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
  }
  result.points.forEach(([x, y], i) => {
    ctx.beginPath();
    ctx.arc(x, y, 2 * lw + 1, 0, 2 * Math.PI);
    ctx.fillStyle = result.point_labels[i] === 1 ? "yellow" : "magenta";
    ctx.fill(); ctx.strokeStyle = "black"; ctx.lineWidth = 1; ctx.stroke();
  });
}

async function drawHeatmap(canvas, photo, heatmapB64) {
  const [w, h] = [photo.naturalWidth, photo.naturalHeight];
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(photo, 0, 0);
  const heat = pixels(await loadImage("data:image/png;base64," + heatmapB64), w, h);
  const frame = ctx.getImageData(0, 0, w, h);
  for (let p = 0; p < heat.data.length; p += 4) {
    const c = ramp(heat.data[p] / 255);
    for (let k = 0; k < 3; k++) frame.data[p + k] = frame.data[p + k] * 0.4 + c[k] * 0.6;
  }
  ctx.putImageData(frame, 0, 0);
}

async function render(doc, mode) {
  const photo = await loadImage(URL.createObjectURL(imageFile));
  const list = $("#results");
  list.querySelectorAll(".result").forEach((c) => c.remove());
  for (const result of doc.results) {
    const card = $("#result-card").content.firstElementChild.cloneNode(true);
    card.querySelector(".expr").textContent = result.expression;
    const overlay = card.querySelector(".overlay");
    if (mode === "segment") {
      await drawOverlay(overlay, photo, result);
      await drawHeatmap(card.querySelector(".heat"), photo, result.heatmap_png);
      card.querySelector(".score").textContent = result.score.toFixed(3);
      const n = (result.instances || []).length;
      const presence = `(presence ${result.presence_score.toFixed(2)})`;
      card.querySelector(".present").textContent = result.present
        ? ($("#instances").checked ? `yes — ${n} instance${n === 1 ? "" : "s"} ${presence}` : `yes ${presence}`)
        : `no — not found ${presence}${result.best_guess ? "; the dashed outline is only a best guess" : ""}`;
      card.classList.toggle("absent", !result.present);
      card.querySelector(".box").textContent = result.present
        ? result.box.map((v) => v.toFixed(0)).join(", ") : "— (nothing found)";
      const dlMask = card.querySelector(".dl-mask");
      dlMask.href = "data:image/png;base64," + result.mask_png;
    } else {
      overlay.closest("figure").remove();
      await drawHeatmap(card.querySelector(".heat"), photo, result.heatmap.data);
      card.querySelector(".score").textContent = "—";
      card.querySelector(".present").textContent = "—";
      card.querySelector(".box").closest("dd").previousElementSibling.textContent = "heatmap peak (x, y)";
      card.querySelector(".box").textContent = result.peak ? result.peak.map((v) => v.toFixed(0)).join(", ") : "—";
      card.querySelector(".dl-mask").remove();
    }
    card.querySelector(".warnings").textContent = (result.warnings || []).join(" ");
    const blob = new Blob([JSON.stringify(result, null, 2)], { type: "application/json" });
    card.querySelector(".dl-json").href = URL.createObjectURL(blob);
    list.appendChild(card);
  }
}

async function run(mode) {
  showError("");
  if (!imageFile) { showError("Choose an image first."); return; }
  if (!expressions().length) { showError("Type at least one expression."); return; }
  const buttons = [$("#segment"), $("#ground")];
  buttons.forEach((b) => (b.disabled = true));
  setStatus(mode === "segment" ? "segmenting…" : "grounding…");
  const t0 = performance.now();
  try {
    const all = $("#instances").checked;
    const extra = mode === "segment"
      ? { return_heatmap: true, return_mask_png: true, ...(thresholdChanged ? { threshold: $("#threshold").value } : {}),
          instances: all ? "all" : "one", proposals: $("#proposals").value, ...(all ? { mask_format: "png" } : {}) }
      : { heatmap_format: "png" };
    const resp = await api(mode, { method: "POST", body: formData(extra) });
    if (!resp.ok) {
      $("#results").querySelectorAll(".result").forEach((c) => c.remove());
      showError(`Request rejected (${resp.status}): ${await errorText(resp)}`);
      setStatus("");
      return;
    }
    const doc = await resp.json();
    await render(doc, mode);
    setStatus(`done in ${Math.round(performance.now() - t0)} ms (server ${doc.timings_ms.total} ms)`);
  } catch (e) {
    showError(String(e.message || e));
    setStatus("");
  } finally {
    buttons.forEach((b) => (b.disabled = false));
  }
}

// --- video: a BentoML task, with progress from /video_progress ------------------------------------
let videoFile = null;
let videoTask = null;

async function postJSON(route, body) {
  const r = await api(route, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  if (!r.ok) throw new Error(await errorText(r));
  return r.json();
}

async function runVideo() {
  showError("");
  const exprs = expressions();
  if (!videoFile) { showError("Choose a video first."); return; }
  if (!exprs.length) { showError("Type an expression first."); return; }
  const fd = new FormData();
  fd.append("video", videoFile, videoFile.name || "video.mp4");
  fd.append("expression", exprs[0]);
  fd.append("return_overlay", "true");
  $("#video-run").disabled = true;
  $("#video-cancel").hidden = false;
  const bar = $("#video-progress");
  bar.hidden = false; bar.removeAttribute("value");
  $("#video-result").hidden = true;
  try {
    const sub = await api("segment_video/submit", { method: "POST", body: fd });
    if (!sub.ok) throw new Error(await errorText(sub));
    videoTask = (await sub.json()).task_id;
    for (;;) {
      await new Promise((r) => setTimeout(r, 300));
      const st = await (await api(`segment_video/status?task_id=${videoTask}`)).json();
      let prog = null;
      try { prog = await postJSON("video_progress", { task_id: videoTask }); } catch (e) { /* not started yet */ }
      if (prog && prog.total) { bar.max = prog.total; bar.value = prog.done; }
      $("#video-status").textContent = prog ? `${prog.state}: ${prog.done}${prog.total ? " / " + prog.total : ""} frames` : "queued";
      if (st.status !== "in_progress") {
        const resp = await api(`segment_video/get?task_id=${videoTask}`);
        if (st.status !== "completed" || !resp.ok) throw new Error(await errorText(resp));
        const doc = await resp.json();
        if (doc.cancelled) { $("#video-status").textContent = `cancelled after ${doc.done} frames (resubmit to resume)`; return; }
        bar.max = doc.frames.length; bar.value = doc.frames.length;
        const present = doc.frames.filter((f) => f.present).length;
        $("#video-summary").textContent = `${doc.frames.length} frames, referent present in ${present}, keyframe ${doc.keyframe}`;
        $("#video-overlay").src = "data:video/mp4;base64," + doc.overlay_mp4_base64;
        const { overlay_mp4_base64, ...rest } = doc;
        $("#video-json").href = URL.createObjectURL(new Blob([JSON.stringify(rest, null, 2)], { type: "application/json" }));
        $("#video-result").hidden = false;
        $("#video-status").textContent = "done";
        return;
      }
    }
  } catch (e) {
    showError(`Video rejected: ${e.message || e}`);
    $("#video-status").textContent = "";
  } finally {
    $("#video-run").disabled = false;
    $("#video-cancel").hidden = true;
  }
}

function init() {
  $("#video-file").addEventListener("change", (e) => {
    videoFile = e.target.files[0];
    $("#video-name").textContent = videoFile ? `${videoFile.name} (${Math.round(videoFile.size / 1024)} KB)` : "";
  });
  $("#video-run").addEventListener("click", runVideo);
  $("#video-cancel").addEventListener("click", () => videoTask && postJSON("video_cancel", { task_id: videoTask }).catch(() => {}));
  $("#file").addEventListener("change", (e) => chooseFile(e.target.files[0]));
  const drop = $("#drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    chooseFile(e.dataTransfer.files[0]);
  });
  $("#segment").addEventListener("click", () => run("segment"));
  $("#ground").addEventListener("click", () => run("ground"));
  const key = $("#api-key");
  key.value = sessionStorage.getItem("dit-grounding-key") || "";
  key.addEventListener("change", () => { sessionStorage.setItem("dit-grounding-key", apiKey()); loadInfo(); });
  $("#threshold").addEventListener("input", () => { thresholdChanged = true; });
  loadInfo();
  loadExamples();
}

function loadInfo() {
  api("info")
    .then(async (r) => {
      if (r.status === 401) throw new Error("this service needs an API key (field above)");
      if (!r.ok) throw new Error(await errorText(r));
      return r.json();
    })
    .then((i) => {
      $("#model-info").textContent = `model ${i.model} · ${i.segmenter} · ${i.device}`;
      const card = i.card || {};
      const banner = $("#card");
      banner.querySelector(".domain").textContent = card.domain || "domain not stated";
      banner.querySelector(".calibration").textContent = card.calibrated
        ? `calibrated: ${(card.calibration || []).join("; ")}` : card.summary;
      banner.classList.toggle("uncalibrated", !card.calibrated);
      banner.hidden = false;
      if (i.defaults && !thresholdChanged) $("#threshold").value = i.defaults.threshold;
      for (const opt of $("#proposals").options) opt.disabled = !(i.proposals || ["none"]).includes(opt.value);
      if (i.defaults && i.defaults.proposals) $("#proposals").value = i.defaults.proposals;
    })
    .catch((e) => { $("#model-info").textContent = `model info unavailable: ${e.message || e}`; });
}

// The shipped examples (GET /examples/examples.json): one click loads the image and its expression.
function loadExamples() {
  fetch("../examples/examples.json").then((r) => (r.ok ? r.json() : [])).then((list) => {
    const box = $("#examples");
    for (const ex of list) {
      const b = document.createElement("button");
      b.type = "button"; b.className = "example"; b.title = `${ex.expression} — ${ex.note}`;
      b.innerHTML = `<img alt="" src="../examples/${ex.image}"><span></span>`;
      b.querySelector("span").textContent = ex.expression;
      b.addEventListener("click", async () => {
        const blob = await (await fetch(`../examples/${ex.image}`)).blob();
        chooseFile(new File([blob], ex.image, { type: blob.type }));
        $("#expressions").value = ex.expression;
      });
      box.appendChild(b);
    }
    box.hidden = !list.length;
  }).catch(() => {});
}

init();
