// The browser app: a digit (picked or drawn) -> the stepwise graph in onnxruntime-web, step by step,
// animating class probabilities against time, the decision and its reaction time, and every area's rates.
// The decision is cordsnet.decision's (web/cordsnet.mjs `reactionTime` with the manifest's no-image
// baseline and margin; the threshold slider starts at the manifest's threshold).
//
// Served by `cordsnet-cli web`: model/manifest.json (the client manifest), model/<artifact file>,
// vendor/ort/* (onnxruntime-web's dist files), digits.json (held-out digits, web/tools/make_digits.py).
// Query: ?ep=wasm|webgpu forces the execution provider (default: WebGPU when an adapter exists, else WASM);
// ?threads=N sets the WASM threads (default min(4, cores); 1 without cross-origin isolation).
// For tests: window.cordsnetDemo.ready (a Promise) and window.cordsnetDemo.classify(input, {steps}).

import { StepwiseRunner, normalise, reactionTime, resizeBilinear } from './cordsnet.mjs';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const COLORS = ['#4e9cff', '#ff9f40', '#4cd97b', '#ff5c6c', '#b18cff', '#c8946b', '#ff7ce0', '#a9b0c2', '#e3e05a', '#3ddfe8'];
const INFERNO = [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21], [250, 193, 39], [252, 255, 164]];

let ort = null;  // onnxruntime-web: its WASM-only build, or its WebGPU build when an adapter exists
let manifest = null;
let runner = null;
let digits = [];
let current = null;  // {raw: Float32Array(S*S in [0,1]), label, caption}
let backend = '';
let queue = Promise.resolve();

// One graph run at a time (the UI and the test API share one session).
function exclusive(fn) {
  const p = queue.then(fn);
  queue = p.catch(() => {});
  return p;
}

let resolveReady, rejectReady;
const ready = new Promise((res, rej) => { resolveReady = res; rejectReady = rej; });
window.cordsnetDemo = {
  ready,
  /**
   * input: normalised flat C·S·S numbers -> {logits: number[K], probabilities: number[steps][K], msPerStep,
   * reactionTime} (msPerStep: mean wall time of one session.run, for benchmarks/bench_apps.py;
   * reactionTime: cordsnet.decision with the manifest's rule, {steps, ms, cls, p, evidence} or null).
   */
  async classify(input, { steps } = {}) {
    await ready;
    const r = await exclusive(() => runner.classify(input, { steps: steps ?? manifest.protocol.steps }));
    const rt = runner.decision ? reactionTime(r.logitsPerStep, runner.decision, manifest.protocol.dt_ms) : null;
    return { logits: r.logits, probabilities: r.probabilities, msPerStep: r.msPerStep, reactionTime: rt };
  },
  /** Animate a run of held-out digit `digit` (index into digits.json) as the run button does. */
  async show(digit, { steps, pace } = {}) {
    await ready;
    selectDigit(digit);
    if (steps !== undefined) $('steps').value = steps;
    if (pace !== undefined) $('pace').value = String(pace);
    return animate();
  },
  info: {},
};

// ------------------------------------------------------------------------------------------ setup
function status(text, error = false) {
  $('status').textContent = text;
  $('status').classList.toggle('error', error);
}

async function sha256Hex(bytes) {
  if (!globalThis.crypto || !crypto.subtle) return null;  // not a secure context: cannot check
  const d = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
  return Array.from(d, (b) => b.toString(16).padStart(2, '0')).join('');
}

async function fetchOk(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r;
}

// The WASM-only build of onnxruntime-web runs the CPU kernels ~4x faster than the WebGPU (JSEP) build's
// WASM fallback (measured 2.7 vs 13.7 ms/step in headless chromium), so each backend gets its own build.
async function loadOrt(build) {
  const mod = await import(`./vendor/ort/${build}`);
  mod.env.wasm.wasmPaths = new URL('vendor/ort/', location.href).href;
  // Small inputs (the bundled 32-px model) run faster on one thread: 1.5 vs 3.7 ms/step on two threads
  // (benchmarks/bench_apps.py); larger models use min(4, cores) threads. ?threads=N overrides.
  const small = manifest.config.image_size <= 64;
  const threads = Number(params.get('threads')) || (small ? 1 : Math.min(4, navigator.hardwareConcurrency || 1));
  mod.env.wasm.numThreads = self.crossOriginIsolated ? threads : 1;  // threads need SharedArrayBuffer
  return mod;
}

async function createRunner(bytes) {
  const wanted = params.get('ep');
  let adapter = null;
  if (wanted !== 'wasm' && navigator.gpu) {
    try { adapter = await navigator.gpu.requestAdapter(); } catch (e) { adapter = null; }
  }
  if (wanted === 'webgpu' && !adapter) throw new Error('ep=webgpu: this browser has no WebGPU adapter');
  if (adapter) {
    try {
      ort = await loadOrt('ort.webgpu.min.mjs');
      const r = await StepwiseRunner.create(ort, bytes, manifest, { executionProviders: ['webgpu'] });
      backend = 'WebGPU';
      return r;
    } catch (e) {
      console.warn('WebGPU session failed, using WASM:', e);
    }
  }
  ort = await loadOrt('ort.wasm.min.mjs');
  const r = await StepwiseRunner.create(ort, bytes, manifest, { executionProviders: ['wasm'] });
  const n = ort.env.wasm.numThreads;
  backend = `WASM, ${n} thread${n > 1 ? 's' : ''}`;
  return r;
}

async function init() {
  manifest = await (await fetchOk('model/manifest.json')).json();
  const bytes = new Uint8Array(await (await fetchOk(`model/${manifest.artifact.file}`)).arrayBuffer());
  const digest = await sha256Hex(bytes);
  if (digest !== null && digest !== manifest.artifact.sha256) {
    throw new Error(`manifest: belongs to another artifact (sha256 ${manifest.artifact.sha256.slice(0, 12)}…, the file has ${digest.slice(0, 12)}…)`);
  }
  runner = await createRunner(bytes);
  digits = (await (await fetchOk('digits.json')).json()).digits;
  Object.assign(window.cordsnetDemo.info, {
    backend, ort: ort.env.versions ? ort.env.versions.common : '', crossOriginIsolated: self.crossOriginIsolated,
    threads: ort.env.wasm.numThreads, manifest,
  });
  $('steps').value = manifest.protocol.steps;
  if (runner.decision) {
    $('threshold').value = runner.decision.threshold;
    $('threshold-value').textContent = runner.decision.threshold.toFixed(2);
  }
  buildGallery();
  buildAreas();
  buildLegend();
  setupDrawing();
  drawPlot([], manifest.protocol.steps);
  const c = manifest.config;
  const p = manifest.protocol;
  $('footer').textContent = `${manifest.artifact.file} · ${(manifest.artifact.size_bytes / 1e6).toFixed(1)} MB · sha256 ${manifest.artifact.sha256.slice(0, 12)}… ${digest ? '(checked)' : ''} · `
    + `CordsNet-R${c.depth}, ${c.in_channels}×${c.image_size}×${c.image_size} input, ${c.num_classes} classes · `
    + `α = ${p.alpha} (dt = ${p.dt_ms} ms) · starts from the spontaneous state after ${p.spontaneous_steps} blank steps (from the manifest) · `
    + `onnxruntime-web ${window.cordsnetDemo.info.ort} · ${backend}${self.crossOriginIsolated ? ' · cross-origin isolated' : ''}`;
  status(`ready · ${backend}`);
  $('run').disabled = false;
  $('run').onclick = () => animate();
  $('threshold').oninput = () => { $('threshold-value').textContent = Number($('threshold').value).toFixed(2); };
  selectDigit(0);
}

// ------------------------------------------------------------------------------------- stimulus
function grayToCanvas(canvas, values, w, h, scale = 1) {
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext('2d');
  const img = ctx.createImageData(w, h);
  for (let i = 0; i < w * h; i++) {
    const v = Math.max(0, Math.min(255, Math.round(values[i] * scale * 255)));
    img.data.set([v, v, v, 255], 4 * i);
  }
  ctx.putImageData(img, 0, 0);
}

function toModelSize(raw, size) {
  const s = Math.round(Math.sqrt(raw.length));
  return s === size ? Float32Array.from(raw) : resizeBilinear(raw, s, s, size);
}

function setStimulus(raw, label, caption) {
  const size = manifest.config.image_size;
  current = { raw: toModelSize(raw, size), label, caption };
  grayToCanvas($('preview'), current.raw, size, size);
  $('preview-caption').textContent = caption;
}

function buildGallery() {
  const g = $('gallery');
  g.innerHTML = '';
  digits.forEach((d, i) => {
    const c = document.createElement('canvas');
    grayToCanvas(c, d.scan, 8, 8, 1 / 16);
    c.title = `held-out digit #${d.index}, label ${d.label}`;
    c.onclick = () => { selectDigit(i); animate(); };
    g.appendChild(c);
  });
}

function selectDigit(i) {
  const d = digits[i];
  [...$('gallery').children].forEach((c, k) => c.classList.toggle('selected', k === i));
  const names = manifest.preset && manifest.preset.class_names;
  setStimulus(d.raw, d.label, `held-out digit #${d.index} · label ${names ? names[d.label] : d.label}`);
}

function setupDrawing() {
  const c = $('draw');
  const ctx = c.getContext('2d');
  const clear = () => { ctx.fillStyle = '#000'; ctx.fillRect(0, 0, c.width, c.height); };
  clear();
  $('clear').onclick = clear;
  let drawing = false;
  const pos = (e) => {
    const r = c.getBoundingClientRect();
    return [(e.clientX - r.left) * c.width / r.width, (e.clientY - r.top) * c.height / r.height];
  };
  c.onpointerdown = (e) => {
    drawing = true; c.setPointerCapture(e.pointerId);
    ctx.strokeStyle = '#fff'; ctx.lineWidth = 15; ctx.lineCap = 'round'; ctx.lineJoin = 'round';
    ctx.beginPath(); ctx.moveTo(...pos(e)); ctx.lineTo(...pos(e)); ctx.stroke();
  };
  c.onpointermove = (e) => { if (drawing) { ctx.lineTo(...pos(e)); ctx.stroke(); } };
  c.onpointerup = () => {
    if (!drawing) return;
    drawing = false;
    const raw = drawingToScan(ctx, c.width, c.height);
    if (raw) {
      [...$('gallery').children].forEach((g) => g.classList.remove('selected'));
      setStimulus(raw, null, 'your drawing (cropped, 8×8 like the scans, upsampled)');
      animate();
    }
  };
}

// The drawing as the digits data were made: the ink's bounding box (as a centred square) averaged
// into 8x8 blocks (values in [0, 1]); upsampled to the model's size by setStimulus.
function drawingToScan(ctx, w, h) {
  const px = ctx.getImageData(0, 0, w, h).data;
  let x0 = w, y0 = h, x1 = -1, y1 = -1;
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    if (px[4 * (y * w + x)] > 32) { x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y); }
  }
  if (x1 < 0) return null;
  const side = Math.max(x1 - x0, y1 - y0) + 1;
  const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
  const scan = new Float32Array(64);
  for (let by = 0; by < 8; by++) for (let bx = 0; bx < 8; bx++) {
    let sum = 0, n = 0;
    for (let y = Math.floor(cy - side / 2 + by * side / 8); y < cy - side / 2 + (by + 1) * side / 8; y++) {
      for (let x = Math.floor(cx - side / 2 + bx * side / 8); x < cx - side / 2 + (bx + 1) * side / 8; x++) {
        n++;
        if (x >= 0 && y >= 0 && x < w && y < h) sum += px[4 * (y * w + x)] / 255;
      }
    }
    scan[by * 8 + bx] = n ? sum / n : 0;
  }
  return scan;
}

// ----------------------------------------------------------------------------------------- views
function setupCanvas(canvas, cssW, cssH) {
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(cssW * dpr); canvas.height = Math.round(cssH * dpr);
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  return ctx;
}

function className(k) {
  const names = manifest.preset && manifest.preset.class_names;
  return names ? names[k] : String(k);
}

function buildLegend() {
  const K = manifest.config.num_classes;
  if (K > COLORS.length) { $('legend').textContent = `${K} classes: the ten most probable are drawn`; return; }
  $('legend').innerHTML = Array.from({ length: K }, (_, k) => `<span><i style="background:${COLORS[k]}"></i>${className(k)}</span>`).join('');
}

const PLOT = { w: 820, h: 330, left: 46, right: 40, top: 14, bottom: 40 };

function drawPlot(history, steps, rt = null, threshold = Number($('threshold').value)) {
  const ctx = setupCanvas($('plot'), PLOT.w, PLOT.h);
  const { w, h, left, right, top, bottom } = PLOT;
  const pw = w - left - right, ph = h - top - bottom;
  const dt = manifest.protocol.dt_ms;
  const X = (t) => left + (t / steps) * pw;  // t: stimulus steps done (0 = onset)
  const Y = (p) => top + (1 - p) * ph;
  ctx.clearRect(0, 0, w, h);
  ctx.font = '11px system-ui, sans-serif';
  ctx.strokeStyle = '#2a3149'; ctx.fillStyle = '#8b93ab'; ctx.lineWidth = 1;
  for (let p = 0; p <= 1.0001; p += 0.25) {
    ctx.beginPath(); ctx.moveTo(left, Y(p)); ctx.lineTo(left + pw, Y(p)); ctx.stroke();
    ctx.textAlign = 'right'; ctx.fillText(p.toFixed(2), left - 6, Y(p) + 4);
  }
  const tickMs = niceStep(steps * dt / 8);
  ctx.textAlign = 'center';
  for (let ms = 0; ms <= steps * dt + 1e-9; ms += tickMs) {
    const x = X(ms / dt);
    ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + ph); ctx.stroke();
    ctx.fillText(`${Math.round(ms)}`, x, top + ph + 15);
  }
  ctx.fillText(`time after stimulus onset (ms; ${steps} steps of ${dt} ms)`, left + pw / 2, h - 6);
  ctx.save(); ctx.translate(12, top + ph / 2); ctx.rotate(-Math.PI / 2); ctx.fillText('probability', 0, 0); ctx.restore();
  // threshold
  ctx.setLineDash([5, 4]); ctx.strokeStyle = '#ffb347aa';
  ctx.beginPath(); ctx.moveTo(left, Y(threshold)); ctx.lineTo(left + pw, Y(threshold)); ctx.stroke();
  ctx.setLineDash([]); ctx.fillStyle = '#ffb347'; ctx.textAlign = 'left';
  ctx.fillText(`threshold ${threshold.toFixed(2)}`, left + 6, Y(threshold) - 5);
  if (!history.length) return;
  const K = history[0].length;
  const last = history[history.length - 1];
  const order = Array.from({ length: K }, (_, k) => k).sort((a, b) => last[a] - last[b]).slice(-COLORS.length);
  const top1 = order[order.length - 1];
  for (const k of order) {
    ctx.strokeStyle = COLORS[k % COLORS.length];
    ctx.lineWidth = k === top1 ? 3 : 1.5;
    ctx.globalAlpha = k === top1 ? 1 : 0.8;
    ctx.beginPath();
    history.forEach((p, t) => (t ? ctx.lineTo(X(t + 1), Y(p[k])) : ctx.moveTo(X(t + 1), Y(p[k]))));
    ctx.stroke();
  }
  ctx.globalAlpha = 1;
  const xe = X(history.length);
  ctx.fillStyle = COLORS[top1 % COLORS.length]; ctx.font = 'bold 13px system-ui, sans-serif';
  ctx.fillText(className(top1), Math.min(xe + 5, w - right + 4), Y(last[top1]) + 4);
  if (rt) {
    const x = X(rt.steps);
    ctx.strokeStyle = '#fff'; ctx.lineWidth = 1; ctx.setLineDash([2, 3]);
    ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + ph); ctx.stroke(); ctx.setLineDash([]);
    ctx.fillStyle = '#fff'; ctx.beginPath(); ctx.arc(x, Y(rt.p), 4, 0, 2 * Math.PI); ctx.fill();
    ctx.font = '12px system-ui, sans-serif'; ctx.textAlign = x > left + pw * 0.7 ? 'right' : 'left';
    ctx.fillText(`decides "${className(rt.cls)}" at ${rt.ms.toFixed(0)} ms (${rt.steps} steps)`, x + (ctx.textAlign === 'right' ? -6 : 6), top + 14);
  }
}

function niceStep(x) {
  const e = Math.pow(10, Math.floor(Math.log10(x)));
  for (const m of [1, 2, 5, 10]) if (m * e >= x) return m * e;
  return 10 * e;
}

const areaViews = [];

function buildAreas() {
  const host = $('areas');
  host.innerHTML = '';
  areaViews.length = 0;
  manifest.spontaneous_state.areas.forEach((a, i) => {
    const [, c, hh, ww] = a.shape;
    const cols = Math.ceil(Math.sqrt(c)), rows = Math.ceil(c / cols);
    const W = cols * (ww + 1) - 1, H = rows * (hh + 1) - 1;
    const div = document.createElement('div');
    div.className = 'area';
    div.innerHTML = `<div class="title"><b>area ${i + 1}</b> · ${c} × ${hh}×${ww} · mean <span class="mean">–</span></div>`;
    const maps = document.createElement('canvas');
    maps.className = 'maps'; maps.width = W; maps.height = H;
    maps.style.height = `${Math.round(180 * H / W)}px`;
    const trace = document.createElement('canvas');
    trace.className = 'trace';
    div.append(maps, trace);
    host.appendChild(div);
    const view = { c, hh, ww, cols, W, H, maps, trace, mean: div.querySelector('.mean'), peak: 1e-6, means: [] };
    areaViews.push(view);
    drawArea(view, runner.spontaneous[i].data, true);
  });
  const note = document.createElement('div');
  note.className = 'note';
  note.innerHTML = `<b>How to read it.</b> Each area is a grid of rate neurons with recurrent convolutions, `
    + `updated every ${manifest.protocol.dt_ms} ms of model time. Before the image appears the network sits in its `
    + `spontaneous activity (the state the manifest carries); the image then drives area 1 and, through it, `
    + `the deeper areas, and the readout of the last area's rates moves from whatever the spontaneous `
    + `activity suggested to a decision. The reaction time is the first step at which the top class holds the `
    + `threshold <i>and</i> the image, not the resting network, put it there: its lead over the strongest rival `
    + `exceeds that of the no-image run at the same step (the manifest's baseline) by ${runner.decision ? runner.decision.margin : '–'} `
    + `logit(s) (cordsnet.decision, as in Python). The resting network alone is confident, so a plain threshold would `
    + `"decide" at once for every image.`;
  host.appendChild(note);
}

function inferno(v) {
  const x = Math.max(0, Math.min(1, v)) * (INFERNO.length - 1);
  const i = Math.min(Math.floor(x), INFERNO.length - 2), f = x - i;
  return INFERNO[i].map((a, k) => Math.round(a + (INFERNO[i + 1][k] - a) * f));
}

function drawArea(view, data, reset = false) {
  const { c, hh, ww, cols, W, H } = view;
  let sum = 0, peak = 0;
  for (let i = 0; i < data.length; i++) { sum += data[i]; if (data[i] > peak) peak = data[i]; }
  if (reset) { view.peak = Math.max(peak, 1e-6); view.means = []; }
  view.peak = Math.max(view.peak, peak);
  const mean = sum / data.length;
  view.means.push(mean);
  view.mean.textContent = mean.toFixed(3);
  const ctx = view.maps.getContext('2d');
  const img = ctx.createImageData(W, H);
  for (let p = 0; p < W * H; p++) img.data.set([20, 24, 38, 255], 4 * p);  // gaps between maps
  for (let ch = 0; ch < c; ch++) {
    const ox = (ch % cols) * (ww + 1), oy = Math.floor(ch / cols) * (hh + 1);
    for (let y = 0; y < hh; y++) for (let x = 0; x < ww; x++) {
      const [r, g, b] = inferno(data[(ch * hh + y) * ww + x] / view.peak);
      img.data.set([r, g, b, 255], 4 * ((oy + y) * W + ox + x));
    }
  }
  ctx.putImageData(img, 0, 0);
  drawTrace(view);
}

function drawTrace(view) {
  const ctx = setupCanvas(view.trace, 180, 40);
  const m = view.means;
  const hi = Math.max(...m) * 1.1 || 1;
  ctx.clearRect(0, 0, 180, 40);
  ctx.strokeStyle = '#ffb347'; ctx.lineWidth = 1.5; ctx.beginPath();
  const steps = Math.max(Number($('steps').value) || 1, m.length - 1);
  m.forEach((v, t) => { const x = 2 + (t / steps) * 176, y = 38 - (v / hi) * 34; t ? ctx.lineTo(x, y) : ctx.moveTo(x, y); });
  ctx.stroke();
  ctx.fillStyle = '#8b93ab'; ctx.font = '10px system-ui, sans-serif'; ctx.textAlign = 'right'; ctx.fillText('mean rate over time', 178, 38);
}

// --------------------------------------------------------------------------------------- the run
function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }
function frame() { return new Promise((r) => requestAnimationFrame(() => r())); }

function animate() {
  return exclusive(async () => {
    $('run').disabled = true;
    const steps = Math.max(1, Math.min(1000, Math.round(Number($('steps').value) || manifest.protocol.steps)));
    const threshold = Number($('threshold').value);
    const pace = Number($('pace').value);
    const dt = manifest.protocol.dt_ms;
    const { in_channels: C, image_size: S } = manifest.config;
    const input = normalise(current.raw, manifest.preset, C, S);
    const history = [];
    const logitsHistory = [];
    const rule = runner.decision;
    areaViews.forEach((v, i) => drawArea(v, runner.spontaneous[i].data, true));
    let rt = null;
    status(`running · ${backend}`);
    const result = await runner.classify(input, {
      steps,
      onStep: async ({ t, logits, probabilities, state, ms }) => {
        history.push(probabilities);
        logitsHistory.push(logits);
        rt = rule ? reactionTime(logitsHistory, rule, dt, { threshold }) : null;
        const top = probabilities.indexOf(Math.max(...probabilities));
        $('prediction').textContent = className(top);
        $('probability').textContent = probabilities[top].toFixed(3);
        $('rt').textContent = !rule ? 'unknown: the manifest has no decision rule (export the model again)'
          : rt ? `${rt.ms.toFixed(0)} ms (${rt.steps} steps)` : `not yet (p ≥ ${threshold.toFixed(2)} with evidence ≥ ${rule.margin})`;
        $('clock').textContent = `${((t + 1) * dt).toFixed(0)} ms (step ${t + 1} / ${steps})`;
        $('speed').textContent = `${ms.toFixed(2)} ms`;
        if (pace > 0 || t % 10 === 9 || t === steps - 1) {
          drawPlot(history, steps, rt, threshold);
          state.forEach((s, i) => drawArea(areaViews[i], s.data));
          await (pace > 0 ? sleep(pace) : frame());
        } else {
          state.forEach((s, i) => areaViews[i].means.push(mean(s.data)));
        }
      },
    });
    $('speed').textContent = `${result.msPerStep.toFixed(2)} ms (mean)`;
    const label = current.label;
    const top = result.logits.indexOf(Math.max(...result.logits));
    status(`done · ${backend}${label !== null ? (top === label ? ' · correct' : ` · label was ${className(label)}`) : ''}`);
    $('run').disabled = false;
    const out = { logits: result.logits, reactionTime: rt, msPerStep: result.msPerStep, prediction: top };
    window.cordsnetDemo.lastRun = out;
    return out;
  });
}

function mean(a) { let s = 0; for (let i = 0; i < a.length; i++) s += a[i]; return s / a.length; }

init().then(() => { resolveReady(); }, (err) => {
  status(`error: ${err.message}`, true);
  console.error(err);
  rejectReady(err);
});
