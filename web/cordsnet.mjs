// CordsNet client library shared by the browser app (web/app.mjs) and Node (examples/node/classify.mjs).
//
// It reads a client manifest (`<artifact>.cordsnet.json`, schema in docs/applications.md) and drives a
// stepwise graph (inputs image, state_0..D-1; outputs logits, next_state_0..D-1) with whichever
// onnxruntime JavaScript package the caller passes in (onnxruntime-web or onnxruntime-node): the
// time loop starts from the manifest's spontaneous state and feeds each next state back as the input.
// No DOM, no fetch, no file system here.

export const MANIFEST_VERSION = 1;

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

/** The spontaneous end state: one {shape: [1, c, h, w], data: Float32Array} per area. */
export function spontaneousState(manifest) {
  return manifest.spontaneous_state.areas.map((area) => {
    const bytes = base64ToBytes(area.data);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const data = new Float32Array(bytes.byteLength / 4);
    for (let i = 0; i < data.length; i++) data[i] = view.getFloat32(4 * i, true);  // little-endian
    const size = area.shape.reduce((a, b) => a * b, 1);
    if (size !== data.length) throw new Error(`manifest: spontaneous state of shape ${area.shape} holds ${data.length} values`);
    return { shape: area.shape, data };
  });
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

/**
 * Reaction time of the decision that holds: the first step of the final stretch of steps in which
 * the same class is on top with probability >= `threshold` (so a confident readout of the
 * spontaneous state that the stimulus then overturns does not count as the decision).
 * Returns {steps (1-based: stimulus steps so far), ms, cls, p} or null while no class holds the
 * threshold. `dtMs` = alpha * 10 ms (the manifest's protocol.dt_ms).
 */
export function reactionTime(probabilities, threshold, dtMs) {
  let start = null;
  let cls = null;
  probabilities.forEach((p, t) => {
    const top = p.indexOf(Math.max(...p));
    if (p[top] < threshold) { start = null; return; }
    if (start === null || top !== cls) { start = t; cls = top; }
  });
  if (start === null) return null;
  return { steps: start + 1, ms: (start + 1) * dtMs, cls, p: probabilities[start][cls] };
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
   * Returns {logits: number[K] (after the last step), probabilities: number[steps][K], msPerStep}.
   */
  async classify(input, { steps = this.manifest.protocol.steps, onStep = null } = {}) {
    if (!Number.isInteger(steps) || steps < 1) throw new Error(`steps: expected an int >= 1, got ${steps}`);
    const image = this.imageTensor(input);
    let state = this.initialState();
    let logits = null;
    const probabilities = [];
    const now = () => (typeof performance !== 'undefined' ? performance.now() : Date.now());
    let busy = 0;
    for (let t = 0; t < steps; t++) {
      const t0 = now();
      const out = await this.step(image, state);
      const ms = now() - t0;
      busy += ms;
      state = out.state;
      logits = Array.from(out.logits);
      const p = softmax(logits);
      probabilities.push(p);
      if (onStep) await onStep({ t, logits, probabilities: p, state, ms });
    }
    return { logits, probabilities, msPerStep: busy / steps };
  }
}
