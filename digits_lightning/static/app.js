// The drawing page: strokes on a canvas, sent as a PNG to POST /api/predict while drawing.
// document.body.dataset.state says where the page stands, for people's CSS and for the browser test:
// "empty" (nothing drawn), "waiting" (the latest drawing or file is not answered yet),
// "answer" (the answer shown is the latest one's), "error" (the latest one could not be read).
"use strict";

const INK = 18;       // pen width in canvas pixels: 280 / 28 * 1.8, about MNIST's stroke once scaled
const DELAY_MS = 120; // the first request waits this long after a change; later ones wait for the answer too

const canvas = document.getElementById("canvas");
const ctx = canvas.getContext("2d");
const $ = (id) => document.getElementById(id);

let strokes = [];   // each stroke: [[x, y], ...] in canvas pixels; undo drops the last one
let current = null; // the stroke being drawn, with its pointer's id
let version = 0;    // bumped by every change of what is to be predicted
let shown = -1;     // the version whose answer is on screen
let timer = null, inFlight = false, dirty = false;
let classes = null;
let fromFile = false; // the answer shown is a file's: Clear takes it away too

function setState(state) { document.body.dataset.state = state; }

function paint() {
  // Dark ink on white paper, as a drawing on paper would be: the server's preprocessing inverts it.
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.strokeStyle = "#000";
  ctx.fillStyle = "#000";
  ctx.lineWidth = INK;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  for (const points of strokes) {
    if (points.length === 1) { // a tap: a dot
      ctx.beginPath();
      ctx.arc(points[0][0], points[0][1], INK / 2, 0, 2 * Math.PI);
      ctx.fill();
      continue;
    }
    ctx.beginPath();
    ctx.moveTo(points[0][0], points[0][1]);
    for (const [x, y] of points.slice(1)) ctx.lineTo(x, y);
    ctx.stroke();
  }
  $("undo").disabled = strokes.length === 0;
  $("clear").disabled = strokes.length === 0 && !fromFile;
}

function point(event) {
  // The canvas may be shown smaller or larger than its 280x280 pixels (CSS): map to its own pixels.
  const box = canvas.getBoundingClientRect();
  return [(event.clientX - box.left) * canvas.width / box.width, (event.clientY - box.top) * canvas.height / box.height];
}

canvas.addEventListener("pointerdown", (event) => {
  if (current || event.button > 0) return; // one stroke at a time; right and middle buttons don't draw
  event.preventDefault();
  canvas.setPointerCapture(event.pointerId); // strokes that leave the canvas keep going until the pen lifts
  current = { id: event.pointerId, points: [point(event)] };
  fromFile = false;
  strokes.push(current.points);
  paint();
  changed();
});
canvas.addEventListener("pointermove", (event) => {
  if (!current || event.pointerId !== current.id) return;
  event.preventDefault();
  // Coalesced events: every sample of a fast pen, not only one per frame.
  const samples = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  for (const e of (samples.length ? samples : [event])) current.points.push(point(e));
  paint();
  changed();
});
for (const type of ["pointerup", "pointercancel"]) {
  canvas.addEventListener(type, (event) => {
    if (current && event.pointerId === current.id) current = null; // the last move has been sent already
  });
}

$("undo").addEventListener("click", () => { strokes.pop(); current = null; paint(); changed(); });
$("clear").addEventListener("click", () => { strokes = []; current = null; fromFile = false; paint(); changed(); });

function changed() {
  version++;
  if (strokes.length === 0) { // nothing to predict: say so, and forget any answer in flight
    dirty = false;
    shown = version;
    show("empty");
    return;
  }
  dirty = true;
  setState("waiting");
  schedule();
}

function schedule() {
  // Debounced, but live: at most one request in flight, the next one as soon as it is answered.
  if (timer === null && !inFlight) timer = setTimeout(sendDrawing, DELAY_MS);
}

async function sendDrawing() {
  timer = null;
  if (!dirty) return;
  dirty = false;
  const v = version;
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  const form = new FormData();
  form.append("image", blob, "drawing.png");
  await send(form, v, "your drawing");
  if (dirty) schedule();
}

async function send(form, v, source) {
  inFlight = true;
  try {
    const response = await fetch("/api/predict", { method: "POST", body: form });
    let body;
    try { body = await response.json(); } catch { body = { message: `the server answered ${response.status} without JSON` }; }
    if (v < shown) return; // an answer overtaken by a newer one already on screen
    shown = v;
    if (response.ok) show("answer", body, source);
    else show("error", body);
  } catch (err) {
    if (v >= shown) { shown = v; show("error", { message: `no answer from the server (${err.message}): is it still running?` }); }
  } finally {
    inFlight = false;
  }
}

function show(state, body, source) {
  $("empty").hidden = state !== "empty";
  $("error").hidden = state !== "error";
  if (state === "error") $("error").textContent = body.message || "the server could not read the image";
  if (state === "empty") $("answer").hidden = true;
  if (state === "answer") {
    $("answer").hidden = false;
    $("digit").textContent = body.label;
    $("confidence").textContent = `${(100 * body.confidence).toFixed(1)}%`;
    $("source").textContent = `from ${source}`;
    $("seen").src = `data:image/png;base64,${body.image}`;
    bars(body);
  }
  if (state === "error") $("answer").hidden = true;
  setState(state !== "empty" && (dirty || shown !== version) ? "waiting" : state);
}

function bars(body) {
  const names = classes && classes.length === body.probabilities.length ? classes : body.probabilities.map((_, i) => String(i));
  const chart = $("bars");
  if (chart.children.length !== names.length) {
    chart.replaceChildren(...names.map((name) => {
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.innerHTML = '<span class="value"></span><span class="track"><span class="fill"></span></span><span class="name"></span>';
      bar.querySelector(".name").textContent = name;
      return bar;
    }));
  }
  body.probabilities.forEach((p, i) => {
    const bar = chart.children[i];
    bar.dataset.probability = String(p);
    bar.classList.toggle("best", i === body.digit);
    bar.title = `${names[i]}: ${(100 * p).toFixed(2)}%`;
    bar.querySelector(".fill").style.height = `${(100 * p).toFixed(2)}%`;
    bar.querySelector(".value").textContent = p >= 0.005 ? `${Math.round(100 * p)}` : "";
  });
}

// Image files: dropped on the page or chosen, predicted the same way as a drawing.
function sendFile(file) {
  if (!file) return;
  strokes = []; current = null; fromFile = true; paint(); // the drawing is replaced by the file
  version++;
  dirty = false;
  if (timer !== null) { clearTimeout(timer); timer = null; }
  setState("waiting");
  const form = new FormData();
  form.append("image", file, file.name);
  send(form, version, file.name);
}

const drop = $("drop");
$("file").addEventListener("change", (event) => { sendFile(event.target.files[0]); event.target.value = ""; });
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
window.addEventListener("dragover", (event) => event.preventDefault()); // a miss must not open the file instead
window.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  sendFile(event.dataTransfer && event.dataTransfer.files[0]);
});

fetch("/api/health").then((r) => r.json()).then((health) => {
  classes = health.classes;
  $("model").textContent = `${health.model} from ${health.file.split("/").pop()}`;
}).catch(() => { $("model").textContent = "The server does not answer /api/health."; });

paint();
show("empty");
