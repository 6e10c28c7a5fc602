// CordsNet client library shared by the browser app (web/app.mjs) and Node (examples/node/classify.mjs).
//
// It reads a client manifest (`<artifact>.cordsnet.json`, schema in docs/applications.md) and drives a
// stepwise graph (inputs image, state_0..D-1; outputs logits, next_state_0..D-1) with whichever
// onnxruntime JavaScript package the caller passes in (onnxruntime-web or onnxruntime-node): the
// time loop starts from the manifest's spontaneous state and feeds each next state back as the input.
// Decisions and reaction times follow exactly cordsnet.decision (Python), with the no-image baseline
// the manifest's "decision" block carries (docs/export.md): see `decide` and `reactionTime`.
// No DOM, no fetch, no file system here.

export const MANIFEST_VERSION = 1;
export const DECISION_RULE = 'cordsnet.decision/1';  // cordsnet.decision.RULE

/** Check the parts of a manifest this library relies on; returns it. Throws Error("manifest: ..."). */
export function checkManifest(manifest) {
  const fail = (what) => { throw new Error(`manifest: ${what}`); };
  if (!manifest || manifest.cordsnet_manifest !== MANIFEST_VERSION) {
    fail(`expected cordsnet_manifest ${MANIFEST_VERSION}, got ${JSON.stringify(manifest && manifest.cordsnet_manifest)}`);
  }
  if (manifest.graph !== 'stepwise') fail(`expected a stepwise graph, got ${JSON.stringify(manifest.graph)}`);
  if (manifest.dtype !== 'float32') fail(`expected dtype float32, got ${JSON.stringify(manifest.dtype)}`);
  const enc = manifest.spontaneous_state && manifest.spontaneous_state.encoding;
  if (enc !== 'base64-float32-le') fail(`expected spontaneous_state encoding base64-float32-le, got ${JSON.stringify(enc)}`);
  return manifest;
}

function base64ToBytes(text) {
  if (typeof atob === 'function') {
    const bin = atob(text);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  return new Uint8Array(Buffer.from(text, 'base64'));  // Node without atob
}

/** Little-endian float32 values of a base64 string (`what` names it in errors). */
function decodeFloat32(text, what) {
  if (typeof text !== 'string') throw new Error(`manifest: ${what}: expected base64 text, got ${typeof text}`);
  const bytes = base64ToBytes(text);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const data = new Float32Array(Math.floor(bytes.byteLength / 4));
  for (let i = 0; i < data.length; i++) data[i] = view.getFloat32(4 * i, true);  // little-endian
  return data;
}

/** The spontaneous end state: one {shape: [1, c, h, w], data: Float32Array} per area. */
export function spontaneousState(manifest) {
  return manifest.spontaneous_state.areas.map((area) => {
    const data = decodeFloat32(area.data, 'spontaneous_state');
    const size = area.shape.reduce((a, b) => a * b, 1);
    if (size !== data.length) throw new Error(`manifest: spontaneous state of shape ${area.shape} holds ${data.length} values`);
    return { shape: area.shape, data };
  });
}

/**
 * The manifest's decision rule (cordsnet.decision/1), validated as cordsnet.artifact.read_manifest does:
 * {threshold, margin, baseline: Float32Array[T] of K logits each (row t: the no-image logits after
 * step t+1)}. null when the manifest has no "decision" block (an export by an older cordsnet).
 */
export function decisionRule(manifest) {
  const block = manifest.decision;
  if (block === undefined || block === null) return null;
  const fail = (what) => { throw new Error(`manifest: decision.${what}`); };
  if (block.rule !== DECISION_RULE) fail(`rule: expected ${DECISION_RULE}, got ${JSON.stringify(block.rule)}`);
  const steps = manifest.protocol.steps, k = manifest.config.num_classes;
  if (typeof block.threshold !== 'number' || !(block.threshold > 1 / k && block.threshold <= 1)) {
    fail(`threshold: expected a number in (1/${k}, 1], got ${JSON.stringify(block.threshold)}`);
  }
  if (typeof block.margin !== 'number' || !(block.margin > 0) || !Number.isFinite(block.margin)) {
    fail(`margin: expected a number > 0, got ${JSON.stringify(block.margin)}`);
  }
  const base = block.baseline || {};
  if (base.encoding !== 'base64-float32-le') fail(`baseline.encoding: expected base64-float32-le, got ${JSON.stringify(base.encoding)}`);
  if (!Array.isArray(base.shape) || base.shape.length !== 2 || base.shape[0] !== steps || base.shape[1] !== k) {
    fail(`baseline.shape: expected [${steps}, ${k}] (protocol steps, classes), got ${JSON.stringify(base.shape)}`);
  }
  if (typeof base.data !== 'string' || base.data.length !== 4 * Math.ceil((4 * steps * k) / 3)) {
    fail(`baseline.data: expected ${4 * steps * k} bytes of base64`);
  }
  const flat = decodeFloat32(base.data, 'decision.baseline');
  if (flat.length !== steps * k || !flat.every(Number.isFinite)) fail('baseline.data: expected finite float32 logits');
  const baseline = [];
  for (let t = 0; t < steps; t++) baseline.push(flat.subarray(t * k, (t + 1) * k));
  return { threshold: block.threshold, margin: block.margin, baseline };
}

/** (raw - mean[c]) / std[c] for a flat (C, S, S) array of raw pixel values in [0, 1]. */
export function normalise(raw, preset, channels, size) {
  const out = new Float32Array(channels * size * size);
  const plane = size * size;
  for (let c = 0; c < channels; c++) {
    const mean = preset ? preset.mean[c % preset.mean.length] : 0;
    const std = preset ? preset.std[c % preset.std.length] : 1;
    for (let i = 0; i < plane; i++) out[c * plane + i] = (raw[(c * plane + i) % raw.length] - mean) / std;
  }
  return out;
}

/** Bilinear resize of an (h, w) plane to (size, size), half-pixel centres (torch's align_corners=False). */
export function resizeBilinear(src, h, w, size) {
  const out = new Float32Array(size * size);
  const sy = h / size, sx = w / size;
  for (let y = 0; y < size; y++) {
    const fy = Math.max((y + 0.5) * sy - 0.5, 0);
    const y0 = Math.min(Math.floor(fy), h - 1), y1 = Math.min(y0 + 1, h - 1), ay = fy - y0;
    for (let x = 0; x < size; x++) {
      const fx = Math.max((x + 0.5) * sx - 0.5, 0);
      const x0 = Math.min(Math.floor(fx), w - 1), x1 = Math.min(x0 + 1, w - 1), ax = fx - x0;
      const top = src[y0 * w + x0] * (1 - ax) + src[y0 * w + x1] * ax;
      const bottom = src[y1 * w + x0] * (1 - ax) + src[y1 * w + x1] * ax;
      out[y * size + x] = top * (1 - ay) + bottom * ay;
    }
  }
  return out;
}

export function softmax(logits) {
  const m = Math.max(...logits);
  const e = Array.from(logits, (v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

/** Index of the first maximum (numpy's argmax). */
function argmax(x) {
  let top = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[top]) top = i;
  return top;
}

/** lead(x)[c] = x[c] - max_{k != c} x[k]: c's log-odds against its strongest rival (cordsnet.decision.lead). */
export function lead(x, c) {
  let rival = -Infinity;
  for (let k = 0; k < x.length; k++) if (k !== c && x[k] > rival) rival = x[k];
  return x[c] - rival;
}

/**
 * The criterion at one step (cordsnet.decision.decide) for one image: the top class c of `logits`
 * is decided when its softmax probability p >= threshold AND its evidence
 * lead(logits)[c] - lead(baseline)[c] >= margin, `baseline` being the no-image logits at this step.
 * Returns {decided, cls, p, evidence}; arithmetic in float64 as in Python.
 */
export function decide(logits, baseline, threshold, margin) {
  const cls = argmax(logits);
  let sum = 0;
  for (let k = 0; k < logits.length; k++) sum += Math.exp(logits[k] - logits[cls]);
  const p = 1 / sum;
  const evidence = lead(logits, cls) - lead(baseline, cls);
  return { decided: p >= threshold && evidence >= margin, cls, p, evidence };
}

/**
 * Reaction time (cordsnet.decision.first_decisions, as StepSession.run_until and reaction_times):
 * the first step whose logits pass `decide` against the manifest baseline at that step.
 * `logitsPerStep`: the logits after each stimulus step so far (an online rule: a prefix gives the
 * decision so far). `rule`: decisionRule(manifest); `threshold`/`margin` override the rule's.
 * Returns {steps (1-based), ms, cls, p, evidence} or null while undecided. `dtMs` = protocol.dt_ms.
 */
export function reactionTime(logitsPerStep, rule, dtMs, { threshold = rule.threshold, margin = rule.margin } = {}) {
  const n = Math.min(logitsPerStep.length, rule.baseline.length);
  for (let t = 0; t < n; t++) {
    const d = decide(logitsPerStep[t], rule.baseline[t], threshold, margin);
    if (d.decided) return { steps: t + 1, ms: (t + 1) * dtMs, cls: d.cls, p: d.p, evidence: d.evidence };
  }
  return null;
}

/**
 * Drives a stepwise graph: `await StepwiseRunner.create(ort, model, manifest)`, then `classify(...)`.
 *
 * `ort` is the onnxruntime namespace (onnxruntime-web or onnxruntime-node); `model` a path/URL or the
 * bytes of the .onnx file; `sessionOptions` go to ort.InferenceSession.create.
 */
export class StepwiseRunner {
  constructor(ort, session, manifest) {
    this.ort = ort;
    this.session = session;
    this.manifest = checkManifest(manifest);
    this.config = manifest.config;
    this.depth = manifest.spontaneous_state.areas.length;
    this.spontaneous = spontaneousState(manifest);
    this.decision = decisionRule(manifest);  // null without a "decision" block
    this.inputSize = this.config.in_channels * this.config.image_size * this.config.image_size;
    const names = new Set(session.inputNames);
    for (const inp of manifest.inputs) {
      if (!names.has(inp.name)) throw new Error(`manifest: input ${inp.name} is not an input of the graph (${session.inputNames})`);
    }
  }

  static async create(ort, model, manifest, sessionOptions = {}) {
    checkManifest(manifest);
    const session = await ort.InferenceSession.create(model, sessionOptions);
    return new StepwiseRunner(ort, session, manifest);
  }

  /** The manifest's spontaneous state as one (1, c, h, w) tensor per area (fresh copies). */
  initialState() {
    return this.spontaneous.map((a) => new this.ort.Tensor('float32', Float32Array.from(a.data), a.shape));
  }

  imageTensor(input) {
    if (input.length !== this.inputSize) {
      throw new Error(`input: expected ${this.inputSize} numbers (C·S·S, normalised), got ${input.length}`);
    }
    const { in_channels: c, image_size: s } = this.config;
    return new this.ort.Tensor('float32', Float32Array.from(input), [1, c, s, s]);
  }

  /** One Euler step: returns {logits: Float32Array(K), state: Tensor[]} (state: the rates of every area). */
  async step(image, state) {
    const feeds = { image };
    state.forEach((s, i) => { feeds[`state_${i}`] = s; });
    const out = await this.session.run(feeds);
    const next = [];
    for (let i = 0; i < this.depth; i++) next.push(out[`next_state_${i}`]);
    return { logits: out.logits.data, state: next };
  }

  /**
   * Present `input` (normalised, flat C·S·S) for `steps` steps after the spontaneous phase.
   * `onStep({t, logits, probabilities, state, ms})` is awaited after every step (for animation).
   * Returns {logits: number[K] (after the last step), logitsPerStep: number[steps][K],
   * probabilities: number[steps][K], msPerStep}.
   */
  async classify(input, { steps = this.manifest.protocol.steps, onStep = null } = {}) {
    if (!Number.isInteger(steps) || steps < 1) throw new Error(`steps: expected an int >= 1, got ${steps}`);
    const image = this.imageTensor(input);
    let state = this.initialState();
    let logits = null;
    const probabilities = [];
    const logitsPerStep = [];
    const now = () => (typeof performance !== 'undefined' ? performance.now() : Date.now());
    let busy = 0;
    for (let t = 0; t < steps; t++) {
      const t0 = now();
      const out = await this.step(image, state);
      const ms = now() - t0;
      busy += ms;
      state = out.state;
      logits = Array.from(out.logits);
      logitsPerStep.push(logits);
      const p = softmax(logits);
      probabilities.push(p);
      if (onStep) await onStep({ t, logits, probabilities: p, state, ms });
    }
    return { logits, logitsPerStep, probabilities, msPerStep: busy / steps };
  }
}
