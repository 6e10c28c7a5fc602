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

export const METADATA_PREFIX = 'cordsnet.';

/** JSON values equal in value: numbers exactly, objects with the same keys in any order (Python's ==). */
function sameJson(a, b) {
  if (Array.isArray(a) || Array.isArray(b)) {
    return Array.isArray(a) && Array.isArray(b) && a.length === b.length && a.every((x, i) => sameJson(x, b[i]));
  }
  if (a !== null && b !== null && typeof a === 'object' && typeof b === 'object') {
    const keys = Object.keys(a);
    return keys.length === Object.keys(b).length && keys.every((k) => Object.hasOwn(b, k) && sameJson(a[k], b[k]));
  }
  return a === b;
}

const isNumberText = (text) => text.trim() !== '' && Number.isFinite(Number(text));

// How a metadata value (text) is compared with the manifest's value: cordsnet.artifact.ArtifactInfo parses both
// sides alike, then compares the parsed values. Each returns true/false, or null when the graph's text is malformed.
const SAME = {
  text: (text, value) => text === (typeof value === 'string' ? value : JSON.stringify(value)),
  number: (text, value) => (isNumberText(text) ? typeof value === 'number' && Number(text) === value : null),
  json: (text, value) => {
    try {
      return sameJson(JSON.parse(text), value);
    } catch {
      return null;
    }
  },
  batch: (text, value) => (text === 'dynamic' ? value === null : SAME.number(text, value)),
  version: (text, value) => text === '' || value === '' || text === value,  // compared only when both are stated
};

// The fields cordsnet.artifact.manifest_disagreements compares, in its order, with where the manifest states
// each (cordsnet.artifact.info._manifest_to_metadata): [name as Python reports it, metadata key without the
// prefix, manifest path, how compared, the graph's value when it lacks the key (undefined: required), the
// manifest's value when it lacks it (undefined: required)]. The spontaneous state is compared last.
const COMPARED = [
  ['graph', 'graph', ['graph'], 'text'],
  ['config', 'config', ['config'], 'json'],
  ['steps', 'steps', ['protocol', 'steps'], 'number'],
  ['spontaneous_steps', 'spontaneous_steps', ['protocol', 'spontaneous_steps'], 'number'],
  ['alpha', 'alpha', ['protocol', 'alpha'], 'number'],
  ['readout', 'readout', ['protocol', 'readout'], 'text', 'last'],
  ['record', 'record', ['protocol', 'record'], 'json', '[]'],
  ['dtype', 'dtype', ['dtype'], 'text', 'float32'],
  ['batch', 'batch', ['batch'], 'batch'],
  ['steps_per_call', 'steps_per_call', ['protocol', 'steps_per_call'], 'number', '1', 1],
  ['preset', 'preset', ['preset'], 'json', 'null', null],
  ['exporter', 'exporter', ['exporter'], 'text', '', ''],
  ['checkpoint_sha256', 'checkpoint_sha256', ['checkpoint_sha256'], 'text', '', ''],
  ['state_dict_sha256', 'state_dict_sha256', ['state_dict_sha256'], 'text', '', ''],
  ['format_version', 'format_version', ['format_version'], 'text'],
  ['version', 'version', ['cordsnet_version'], 'version', '', ''],
];

/** IEEE half-precision values (little-endian bytes) as float32. */
function decodeFloat16(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(Math.floor(bytes.byteLength / 2));
  for (let i = 0; i < out.length; i++) {
    const h = view.getUint16(2 * i, true), e = (h >> 10) & 0x1f, f = h & 0x3ff;
    const v = e === 0 ? f * 2 ** -24 : e === 31 ? (f ? NaN : Infinity) : (f + 1024) * 2 ** (e - 25);
    out[i] = h & 0x8000 ? -v : v;
  }
  return out;
}

/** The spontaneous state: the same areas, shapes and float32 values (numpy's array_equal on float32). */
function sameSpontaneous(metadata, manifest, fail) {
  const areas = manifest.spontaneous_state && manifest.spontaneous_state.areas;
  const text = metadata[`${METADATA_PREFIX}spontaneous_state`];
  if (!Array.isArray(areas)) return false;
  let entries = null;
  if (text === undefined) {  // cordsnet.artifact.info._spontaneous: zeros when there is no spontaneous phase
    if (Number(metadata[`${METADATA_PREFIX}spontaneous_steps`]) !== 0) fail(`lacks the metadata key '${METADATA_PREFIX}spontaneous_state'`);
  } else {
    try {
      entries = JSON.parse(text);
    } catch {
      entries = undefined;
    }
    if (!Array.isArray(entries)) fail(`has a malformed '${METADATA_PREFIX}spontaneous_state'`);
    if (entries.length !== areas.length) return false;
  }
  const decoders = { float32: decodeFloat32Bytes, float16: decodeFloat16 };
  return areas.every((area, i) => {
    if (!area || !Array.isArray(area.shape) || typeof area.data !== 'string') return false;
    const size = area.shape.reduce((a, b) => a * b, 1);
    try {  // undecodable base64 on either side: not the same state
      const bytes = base64ToBytes(area.data), values = decodeFloat32Bytes(bytes);
      if (bytes.length !== 4 * size) return false;
      if (entries === null) return values.every((v) => v === 0);
      const e = entries[i];
      const decode = e && decoders[e.dtype];
      if (!decode || !sameJson(e.shape, area.shape) || typeof e.data !== 'string') return false;
      const own = decode(base64ToBytes(e.data));
      return own.length === size && values.every((v, k) => v === own[k]);
    } catch {
      return false;
    }
  });
}

/**
 * The fields a manifest states differently from the graph's own `cordsnet.*` metadata ([] when they agree),
 * as cordsnet.artifact.manifest_disagreements compares them. `metadata`: the graph's string map (ONNX
 * metadata_props); `source` names the graph in errors. Throws Error("model: ...") when the graph holds no
 * cordsnet metadata, lacks a required key or holds a malformed value.
 */
export function manifestDisagreements(manifest, metadata, source = 'model') {
  const fail = (what) => { throw new Error(`model: ${source} ${what}`); };
  if (metadata[`${METADATA_PREFIX}format_version`] === undefined) {
    fail(`is not a cordsnet export (no '${METADATA_PREFIX}format_version' metadata); its manifest cannot be checked against it`);
  }
  const diffs = [];
  for (const [name, key, path, as, graphDefault, manifestDefault] of COMPARED) {
    const text = metadata[METADATA_PREFIX + key] ?? graphDefault;
    if (text === undefined) fail(`lacks the metadata key '${METADATA_PREFIX}${key}'`);
    let value = path.reduce((obj, k) => (obj !== null && typeof obj === 'object' && Object.hasOwn(obj, k) ? obj[k] : undefined), manifest);
    if (value === undefined) value = manifestDefault;
    const same = value === undefined ? false : SAME[as](text, value);
    if (same === null) fail(`has a bad '${METADATA_PREFIX}${key}' = ${JSON.stringify(text.slice(0, 80))}`);
    if (!same) diffs.push(name);
  }
  if (!sameSpontaneous(metadata, manifest, fail)) diffs.push('spontaneous_state');
  return diffs;
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

/** Little-endian float32 values of bytes. */
function decodeFloat32Bytes(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const data = new Float32Array(Math.floor(bytes.byteLength / 4));
  for (let i = 0; i < data.length; i++) data[i] = view.getFloat32(4 * i, true);  // little-endian
  return data;
}

/** Little-endian float32 values of a base64 string (`what` names it in errors). */
function decodeFloat32(text, what) {
  if (typeof text !== 'string') throw new Error(`manifest: ${what}: expected base64 text, got ${typeof text}`);
  return decodeFloat32Bytes(base64ToBytes(text));
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
