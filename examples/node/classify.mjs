#!/usr/bin/env node
// Drive a CordsNet stepwise graph with onnxruntime-node, from its client manifest.
//
//   cd examples/node && ONNXRUNTIME_NODE_INSTALL=skip npm ci
//   node classify.mjs MODEL.onnx [--manifest MODEL.onnx.cordsnet.json] [--input images.json] [--steps N]
//                    [--threshold P] [--margin M] [--json]
//
// --input: {"images": [[C·S·S normalised numbers], ...]}; default: the held-out digits of web/digits.json,
// normalised with the manifest's preset. The time loop and the manifest reader are the browser app's
// (web/cordsnet.mjs): start from the manifest's spontaneous state, feed each next state back. The decision
// is cordsnet.decision's (the manifest's "decision" block: threshold, margin, no-image baseline);
// --threshold and --margin override the manifest's values. The manifest is believed only once it belongs to the
// graph (file name, sha256, size) and agrees with the graph's own cordsnet.* metadata on every field both hold.

import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ort from 'onnxruntime-node';
import protobuf from 'protobufjs/light.js';
import { METADATA_PREFIX, StepwiseRunner, decide, manifestDisagreements, normalise, reactionTime } from '../../web/cordsnet.mjs';

const here = dirname(fileURLToPath(import.meta.url));

// onnxruntime-node exposes no model metadata (only the inputs' and outputs'), so the graph's own cordsnet.*
// metadata is read from ModelProto.metadata_props with protobufjs; the schema declares only that field
// (onnx.proto: metadata_props = 14, StringStringEntryProto {key = 1, value = 2}), every other field is skipped.
const ModelProto = protobuf.Root.fromJSON({ nested: { onnx: { nested: {
  StringStringEntryProto: { fields: { key: { type: 'string', id: 1 }, value: { type: 'string', id: 2 } } },
  ModelProto: { fields: { metadata_props: { rule: 'repeated', type: 'StringStringEntryProto', id: 14 } } },
} } } }).lookupType('onnx.ModelProto');

/** The cordsnet.* entries of an ONNX file's metadata_props (the last of a repeated key, as Python's dict). */
function onnxMetadata(bytes, path) {
  let props;
  try {
    props = ModelProto.decode(bytes).metadata_props;
  } catch (e) {
    throw new Error(`model: '${path}' is not a readable ONNX file (truncated, corrupt or not ONNX): ${e.message}`);
  }
  const meta = {};
  for (const { key, value } of props) if (key.startsWith(METADATA_PREFIX)) meta[key] = value;
  return meta;
}

/**
 * Refuse a manifest that belongs to another file, or says other than the graph (cordsnet.artifact.check_manifest):
 * its file name, format, sha256 and size must be the graph's, and every field the graph's own metadata also holds
 * must agree with it (manifestDisagreements).
 */
function checkManifestAgainst(manifest, manifestFile, bytes, path) {
  const art = (manifest && manifest.artifact) || {};
  const where = `manifest: '${manifestFile}'`;
  if (art.file !== basename(path)) throw new Error(`${where} belongs to ${JSON.stringify(art.file)}, not to '${basename(path)}'`);
  if (art.format !== 'onnx') throw new Error(`${where} describes a ${JSON.stringify(art.format)} artifact; this program runs onnx`);
  const sha = createHash('sha256').update(bytes).digest('hex');
  if (art.sha256 !== sha || art.size_bytes !== bytes.length) {
    throw new Error(`${where} belongs to another artifact: its sha256 ${String(art.sha256).slice(0, 12)}... does not match `
                    + `${basename(path)} (sha256 ${sha.slice(0, 12)}...); export again or delete the stale manifest`);
  }
  const diffs = manifestDisagreements(manifest, onnxMetadata(bytes, path), `'${path}'`);
  if (diffs.length) {
    throw new Error(`${where} disagrees with the metadata inside ${basename(path)} on ${diffs.join(', ')}; the manifest `
                    + 'was edited or belongs to another export: export again');
  }
}

function parseArgs(argv) {
  const opts = { model: null, manifest: null, input: null, steps: null, threshold: null, margin: null, json: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${a}: expected a value`);
      return argv[++i];
    };
    if (a === '--manifest') opts.manifest = value();
    else if (a === '--input') opts.input = value();
    else if (a === '--steps') opts.steps = Number(value());
    else if (a === '--threshold') opts.threshold = Number(value());
    else if (a === '--margin') opts.margin = Number(value());
    else if (a === '--json') opts.json = true;
    else if (a.startsWith('--')) throw new Error(`unknown option ${a} (valid: --manifest --input --steps --threshold --margin --json)`);
    else if (opts.model === null) opts.model = a;
    else throw new Error(`unexpected argument ${a}`);
  }
  if (opts.model === null) throw new Error('MODEL: expected the path of a stepwise .onnx graph');
  if (opts.steps !== null && !(Number.isInteger(opts.steps) && opts.steps >= 1)) throw new Error(`--steps: expected an int >= 1, got ${opts.steps}`);
  if (opts.threshold !== null && !(opts.threshold > 0 && opts.threshold <= 1)) throw new Error(`--threshold: expected a probability in (0, 1], got ${opts.threshold}`);
  if (opts.margin !== null && !(opts.margin > 0 && Number.isFinite(opts.margin))) throw new Error(`--margin: expected a number > 0, got ${opts.margin}`);
  return opts;
}

function readJson(path, what) {
  try {
    return JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new Error(`${what}: cannot read ${path} (${e.message})`);
  }
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const manifestFile = opts.manifest ?? `${opts.model}.cordsnet.json`;
  const manifest = readJson(manifestFile, 'manifest');
  let bytes;
  try {
    bytes = readFileSync(opts.model);
  } catch (e) {
    throw new Error(`MODEL: cannot read ${opts.model} (${e.message})`);
  }
  checkManifestAgainst(manifest, manifestFile, bytes, opts.model);
  const runner = await StepwiseRunner.create(ort, bytes, manifest, { executionProviders: ['cpu'] });
  const rule = runner.decision;
  if (rule === null) throw new Error('manifest: no "decision" block (exported by an older cordsnet); export the model again');
  const threshold = opts.threshold ?? rule.threshold;
  const margin = opts.margin ?? rule.margin;
  if (!(threshold > 1 / manifest.config.num_classes)) throw new Error(`--threshold: expected more than 1/${manifest.config.num_classes}, got ${threshold}`);
  const { in_channels: C, image_size: S } = manifest.config;
  let images, labels;
  if (opts.input) {
    images = readJson(opts.input, 'input').images;
    labels = images.map(() => null);
  } else {
    const digits = readJson(join(here, '..', '..', 'web', 'digits.json'), 'digits').digits;
    images = digits.map((d) => normalise(d.raw, manifest.preset, C, S));
    labels = digits.map((d) => d.label);
  }
  const steps = opts.steps ?? manifest.protocol.steps;
  const names = (manifest.preset && manifest.preset.class_names) || null;
  const results = [];
  for (let b = 0; b < images.length; b++) {
    const r = await runner.classify(images[b], { steps });
    const prediction = r.logits.indexOf(Math.max(...r.logits));
    const rt = reactionTime(r.logitsPerStep, rule, manifest.protocol.dt_ms, { threshold, margin });
    // the criterion at every step (evidence and probability of the top class), for checks against Python
    const trace = r.logitsPerStep.map((z, t) => decide(z, rule.baseline[t], threshold, margin));
    results.push({ logits: r.logits, logits_per_step: r.logitsPerStep, probabilities: r.probabilities, prediction,
                   reaction_time: rt, decisions: trace, ms_per_step: r.msPerStep });
    if (!opts.json) {
      const name = names ? names[prediction] : prediction;
      const label = labels[b] === null ? '' : ` (label ${names ? names[labels[b]] : labels[b]})`;
      const when = rt ? `decided ${names ? names[rt.cls] : rt.cls} at ${rt.ms} ms (${rt.steps} steps)` : `undecided (threshold ${threshold}, margin ${margin})`;
      console.log(`image ${b}: ${name}${label}, p = ${r.probabilities[steps - 1][prediction].toFixed(3)}, ${when}, ${r.msPerStep.toFixed(3)} ms/step`);
    }
  }
  if (opts.json) {
    process.stdout.write(JSON.stringify({ runtime: `onnxruntime-node ${ort.env.versions.node}`, steps, threshold, margin,
                                          results }));
  }
}

main().catch((e) => {
  console.error(`Error: ${e.message}`);
  process.exit(1);
});
