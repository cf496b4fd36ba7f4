#!/usr/bin/env node
// littlebook: run a littlebook-onnx bundle from Node.js with onnxruntime-node and nothing else.
//
//   node cli.mjs classify   BUNDLE IMAGE...                 the label and top-3 of each image
//   node cli.mjs detect     BUNDLE IMAGE [--score 0.4] [--iou 0.45]
//   node cli.mjs segment    BUNDLE IMAGE [--out mask.png]  the mask as a PNG (colour per class)
//   node cli.mjs generate   BUNDLE PROMPT [--max-new-tokens 200] [--temperature 0.8] [--top-k 0] [--top-p 0.95] [--seed N]
//   node cli.mjs transcribe BUNDLE FILE.wav... [--beam N]
//   node cli.mjs imagegen   BUNDLE --label 3 [--count 8] [--steps 25] [--guidance 2] [--seed N] [--out digits.png]
//
// Every command takes --variant fp32|int8|fp16|smallest (default fp32) and --json (one JSON line per
// answer, for programs). The loops are js/littlebook.mjs, the same module the web page runs.
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";

import jpeg from "jpeg-js";
import * as ort from "onnxruntime-node";
import { PNG } from "pngjs";

import * as lb from "../../js/littlebook.mjs";

const USAGE = "usage: node cli.mjs classify|detect|segment|generate|transcribe|imagegen BUNDLE [INPUT...] [options] (see the header of cli.mjs)";

class UsageError extends Error {}

function readImage(path) {
  let bytes;
  try {
    bytes = readFileSync(path);
  } catch {
    throw new lb.BundleError(`the image file was not found: ${path}`);
  }
  try {
    if (bytes[0] === 0x89 && bytes[1] === 0x50) {
      const png = PNG.sync.read(bytes);
      return { data: new Uint8Array(png.data.buffer, png.data.byteOffset, png.data.length), width: png.width, height: png.height, channels: 4 };
    }
    if (bytes[0] === 0xff && bytes[1] === 0xd8) {
      const img = jpeg.decode(bytes, { useTArray: true, formatAsRGBA: true, maxMemoryUsageInMB: 512 });
      return { data: img.data, width: img.width, height: img.height, channels: 4 };
    }
  } catch (e) {
    throw new lb.BundleError(`the image is damaged or truncated; it cannot be decoded (${path})`);
  }
  throw new lb.BundleError(`that file is not an image this program reads (PNG or JPEG): ${path}`);
}

function writePng(path, { data, width, height, channels }) {
  const png = new PNG({ width, height });
  for (let p = 0; p < width * height; p++) {
    for (let c = 0; c < 3; c++) png.data[4 * p + c] = data[channels * p + (channels === 1 ? 0 : c)];
    png.data[4 * p + 3] = 255;
  }
  writeFileSync(path, PNG.sync.write(png));
}

function readAudio(path) {
  let bytes;
  try {
    bytes = new Uint8Array(readFileSync(path));
  } catch {
    throw new lb.BundleError(`the audio file was not found: ${path}`);
  }
  return lb.decodeWav(bytes);
}

async function main(argv) {
  const { values: o, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      variant: { type: "string", default: "fp32" }, json: { type: "boolean", default: false },
      score: { type: "string" }, iou: { type: "string" }, out: { type: "string" },
      "max-new-tokens": { type: "string" }, temperature: { type: "string" }, "top-k": { type: "string" },
      "top-p": { type: "string" }, seed: { type: "string" }, beam: { type: "string" },
      label: { type: "string" }, count: { type: "string" }, steps: { type: "string" }, guidance: { type: "string" },
      noise: { type: "string" }, help: { type: "boolean", short: "h", default: false },
    },
  });
  if (o.help) { console.log(USAGE); return; }
  const [command, dir, ...inputs] = positionals;
  if (!command || !dir) throw new UsageError("a command and a bundle folder are needed");
  const number = (name, integer = false) => {
    if (o[name] === undefined) return undefined;
    const x = Number(o[name]);
    if (!Number.isFinite(x) || (integer && !Number.isInteger(x))) throw new UsageError(`--${name} must be ${integer ? "an integer" : "a number"}, got ${o[name]}`);
    return x;
  };
  const read = async (name) => {
    try {
      return new Uint8Array(readFileSync(join(dir, name)));
    } catch {
      throw new lb.BundleError(`${join(dir, name)} cannot be read: is ${dir} a bundle folder?`);
    }
  };
  const bundle = await lb.openBundle(ort, read, { variant: o.variant, sessionOptions: { intraOpNumThreads: 2 } });
  const want = { classify: "classify", detect: "detect", segment: "segment", generate: "textgen", transcribe: "asr", imagegen: "imagegen" }[command];
  if (!want) throw new UsageError(`unknown command '${command}'`);
  if (bundle.task !== want) throw new lb.BundleError(`${dir} is a ${bundle.task} bundle; '${command}' needs a ${want} bundle`);
  const say = (obj, text) => console.log(o.json ? JSON.stringify(obj) : text);

  if (command === "classify") {
    if (!inputs.length) throw new UsageError("classify needs at least one image file");
    for (const path of inputs) {
      const r = await lb.classify(bundle, readImage(path));
      say({ file: path, label: r.label, probs: r.probs },
        `${path}: ${r.label} (${r.ranked.slice(0, 3).map((x) => `${x.label} ${(100 * x.prob).toFixed(1)}%`).join(", ")})`);
    }
  } else if (command === "detect") {
    if (inputs.length !== 1) throw new UsageError("detect needs one image file");
    const found = await lb.detect(bundle, readImage(inputs[0]), { scoreThreshold: number("score"), iouThreshold: number("iou") });
    say({ file: inputs[0], detections: found },
      `${found.length} detection${found.length === 1 ? "" : "s"}\n` + found.map((d) => `${d.label} ${d.score.toFixed(3)} [${d.box.map((v) => v.toFixed(1)).join(", ")}]`).join("\n"));
  } else if (command === "segment") {
    if (inputs.length !== 1) throw new UsageError("segment needs one image file");
    const r = await lb.segment(bundle, readImage(inputs[0]));
    const colours = lb.palette(bundle.info.labels.length);
    const rgb = new Uint8Array(r.mask.length * 3);
    r.mask.forEach((c, p) => rgb.set(colours[c] ?? [0, 0, 0], 3 * p));
    const out = o.out ?? "mask.png";
    writePng(out, { data: rgb, width: r.width, height: r.height, channels: 3 });
    say({ file: inputs[0], out, shares: r.shares, mask: o.json ? Array.from(r.mask) : undefined },
      `${out}: ${Object.entries(r.shares).map(([k, v]) => `${k} ${(100 * v).toFixed(1)}%`).join(", ") || "background only"}`);
  } else if (command === "generate") {
    if (inputs.length !== 1) throw new UsageError("generate needs one prompt (quote it)");
    const settings = { maxNewTokens: number("max-new-tokens", true), temperature: number("temperature"), topK: number("top-k", true), topP: number("top-p"), seed: number("seed", true) };
    if (o.json) {
      const r = await lb.complete(bundle, inputs[0], settings);
      say({ prompt: inputs[0], text: r.text, bytes: Buffer.from(r.bytes).toString("base64"), steps: r.steps, tokens_per_s: r.steps / r.seconds });
    } else {
      const t0 = performance.now();
      let steps = 0;
      process.stdout.write(inputs[0]);
      for await (const st of lb.generate(bundle, inputs[0], settings)) { process.stdout.write(st.text); steps++; }
      process.stderr.write(`\n[${steps} bytes, ${(steps / ((performance.now() - t0) / 1000)).toFixed(0)} bytes/s, ${bundle.variant}]\n`);
    }
  } else if (command === "transcribe") {
    if (!inputs.length) throw new UsageError("transcribe needs at least one WAV file");
    const waves = inputs.map(readAudio);
    const out = await lb.transcribe(bundle, waves, { beam: number("beam", true) });
    out.forEach((t, k) => say({ file: inputs[k], ...t },
      `${inputs[k]}: ${t.text || `(${t.note})`}\n` + t.segments.map((s) => `  [${s.start.toFixed(2)}-${s.end.toFixed(2)} s] ${s.text}`).join("\n")));
  } else if (command === "imagegen") {
    const count = number("count", true) ?? 8;
    let noise;
    if (o.noise) {
      let raw;
      try { raw = new Uint8Array(readFileSync(o.noise)); } catch { throw new lb.BundleError(`the noise file was not found: ${o.noise}`); }
      if (raw.length % 4) throw new lb.BundleError(`the noise file must hold float32 values (its ${raw.length} bytes are not a multiple of 4)`);
      noise = new Float32Array(raw.buffer, raw.byteOffset, raw.length / 4);
    }
    const images = await lb.generateDigits(bundle, { label: o.label ?? "0", count, guidance: number("guidance"), steps: number("steps", true), seed: number("seed", true), noise });
    const { width, height } = images[0];
    const sheet = new Uint8Array(width * height * images.length);
    images.forEach((im, k) => { for (let y = 0; y < height; y++) sheet.set(im.data.subarray(y * width, (y + 1) * width), y * width * images.length + k * width); });
    const out = o.out ?? "digits.png";
    writePng(out, { data: sheet, width: width * images.length, height, channels: 1 });
    say({ out, label: o.label ?? "0", images: o.json ? images.map((im) => Buffer.from(im.data).toString("base64")) : undefined },
      `${out}: ${images.length} image${images.length === 1 ? "" : "s"} of ${o.label ?? "0"} (${width}x${height})`);
  }
}

main(process.argv.slice(2)).catch((e) => {
  const usage = e instanceof UsageError || e.code === "ERR_PARSE_ARGS_UNKNOWN_OPTION" || e.code === "ERR_PARSE_ARGS_INVALID_OPTION_VALUE";
  console.error(`error: ${e.message}${usage ? ` (${USAGE})` : ""}`);
  process.exit(usage ? 2 : 1);
});
