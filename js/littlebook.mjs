// littlebook.mjs: the bundles of littlebook-onnx in JavaScript, one module for two hosts.
//
// Node.js hands it onnxruntime-node (examples/node/cli.mjs), a web page onnxruntime-web (web/app.mjs);
// the module imports nothing itself. Each task is a function over an opened bundle; the loops that
// live outside the graphs (text decoding over the KV cache, speech's voice activity, beam search and
// CTC rescoring) are ports of serve/'s numpy loops, and tests/examples/test_node.py checks their
// answers against Python's for every task.
//
// A bundle is a folder: manifest.json and its ONNX files. `read(name)` gives a file's bytes
// (Node: fs.readFile in the folder; the browser: fetch beside the page).
//
// Shapes: N batch, H height, W width, C channels, S tokens, P cached tokens, Hd heads, Dh head dim,
// L samples (16 kHz), F encoder frames (40 ms), V vocabulary.

export const PORTABLE = ["fp32", "int8", "fp16"]; // variants any ONNX Runtime build runs (opt, openvino-*: this machine's)

const utf8 = new TextDecoder();

// ---------------------------------------------------------------------------------------------
// Tensors

function i64(values, dims) {
  return { type: "int64", data: BigInt64Array.from(values, (v) => BigInt(v)), dims };
}

function num(x) {
  return typeof x === "bigint" ? Number(x) : x;
}

export class BundleError extends Error {}

// ---------------------------------------------------------------------------------------------
// The bundle

/** The accepted portable variants of a manifest, smallest files first ([name, bytes]). */
export function portableVariants(manifest) {
  const out = [];
  for (const name of PORTABLE) {
    if (manifest.variants?.[name]?.status !== "accepted") continue;
    let bytes = 0;
    for (const g of Object.values(manifest.graphs)) {
      const file = g.files?.[name];
      if (!file) { bytes = -1; break; }
      bytes += manifest.files?.[file]?.bytes ?? 0;
    }
    if (bytes >= 0) out.push([name, bytes]);
  }
  return out.sort((a, b) => a[1] - b[1]);
}

export class Bundle {
  constructor(ort, manifest, variant, sessions) {
    this.ort = ort;
    this.manifest = manifest;
    this.task = manifest.task;
    this.variant = variant;
    this.sessions = sessions; // graph name -> InferenceSession
    this.info = manifest.info ?? {};
    this.inference = manifest.inference ?? {};
    this.calls = 0;
    this.seconds = 0; // time spent in the sessions
    this.queue = Promise.resolve(); // one call at a time: a session does not take concurrent runs (onnxruntime-web)
  }

  /** One graph call: feeds {name: {type, data, dims} | ort.Tensor} -> {name: ort.Tensor}. */
  run(graph, feeds) {
    const next = this.queue.then(() => this.runNow(graph, feeds));
    this.queue = next.catch(() => {});
    return next;
  }

  async runNow(graph, feeds) {
    const session = this.sessions[graph];
    if (!session) throw new BundleError(`this ${this.task} bundle has no graph '${graph}'`);
    const tensors = {};
    for (const [k, v] of Object.entries(feeds)) {
      tensors[k] = v instanceof this.ort.Tensor ? v : new this.ort.Tensor(v.type, v.data, v.dims);
    }
    const t0 = performance.now();
    const out = await session.run(tensors);
    this.seconds += (performance.now() - t0) / 1000;
    this.calls += 1;
    return out;
  }

  /** The file (and its size) a graph runs from. */
  fileOf(graph) {
    const file = this.manifest.graphs[graph].files[this.variant];
    return { file, bytes: this.manifest.files?.[file]?.bytes ?? null };
  }
}

/**
 * Open a bundle: `read(name) -> Promise<Uint8Array>` reads its files. `variant`: a name, "smallest"
 * (the smallest accepted portable one: INT8 where it kept the metric) or, by default, "fp32".
 */
export async function openBundle(ort, read, { variant = "fp32", sessionOptions = {} } = {}) {
  let manifest;
  try {
    manifest = JSON.parse(utf8.decode(await read("manifest.json")));
  } catch (e) {
    throw new BundleError(`not a bundle: manifest.json cannot be read (${e.message})`);
  }
  if (!manifest.graphs || !manifest.task) throw new BundleError("not a bundle: manifest.json names no task or graphs");
  const accepted = portableVariants(manifest);
  if (variant === "smallest") {
    if (!accepted.length) throw new BundleError("no accepted portable variant in this bundle");
    variant = accepted[0][0];
  } else if (!accepted.some(([name]) => name === variant)) {
    const names = accepted.map(([name]) => name).join(", ");
    throw new BundleError(`variant '${variant}' is not an accepted portable variant of this bundle (choose from ${names})`);
  }
  const sessions = {};
  for (const [graph, spec] of Object.entries(manifest.graphs)) {
    sessions[graph] = await ort.InferenceSession.create(await read(spec.files[variant]), sessionOptions);
  }
  return new Bundle(ort, manifest, variant, sessions);
}

// ---------------------------------------------------------------------------------------------
// Images: {data: Uint8Array, width, height, channels} (row-major H x W x C)

/** RGBA (or RGB, grey) pixels -> RGB on white paper, as the Python server reads a file (PIL's paste with alpha). */
export function toRGB(image) {
  const { data, width, height, channels } = image;
  if (channels === 3) return image;
  const out = new Uint8Array(width * height * 3);
  for (let p = 0; p < width * height; p++) {
    if (channels === 1) {
      out[3 * p] = out[3 * p + 1] = out[3 * p + 2] = data[p];
      continue;
    }
    const a = channels === 4 ? data[4 * p + 3] : data[2 * p + 1];
    for (let c = 0; c < 3; c++) {
      const v = channels === 4 ? data[4 * p + c] : data[2 * p];
      const t = 255 * (255 - a) + v * a + 128; // PIL's BLEND: white * (1 - alpha) + colour * alpha, /255 rounded
      out[3 * p + c] = ((t >> 8) + t) >> 8;
    }
  }
  return { data: out, width, height, channels: 3 };
}

function imageFeed(image) {
  const rgb = toRGB(image);
  return { type: "uint8", data: rgb.data, dims: [1, rgb.height, rgb.width, 3] };
}

/** classify: an image (any size; ink on paper, the graph crops to it) -> {label, probs, ranked}. */
export async function classify(bundle, image) {
  const out = await bundle.run("model", { image: imageFeed(image) });
  const probs = Array.from(out.probs.data);
  const labels = bundle.info.labels;
  const ranked = probs.map((p, i) => ({ label: labels[i], prob: p })).sort((a, b) => b.prob - a.prob);
  return { label: ranked[0].label, probs, ranked };
}

/** detect: an image -> boxes [{label, score, box: [x1, y1, x2, y2] pixels}], best first (NMS inside the graph). */
export async function detect(bundle, image, { scoreThreshold, iouThreshold } = {}) {
  const score = scoreThreshold ?? bundle.inference.score_threshold ?? 0.4;
  const iou = iouThreshold ?? bundle.inference.iou_threshold ?? 0.45;
  const out = await bundle.run("model", {
    image: imageFeed(image),
    score_threshold: { type: "float32", data: Float32Array.of(score), dims: [] },
    iou_threshold: { type: "float32", data: Float32Array.of(iou), dims: [] },
  });
  const n = num(out.num_detections.data[0]);
  const labels = bundle.info.labels;
  const found = [];
  for (let i = 0; i < n; i++) {
    found.push({
      label: labels[num(out.labels.data[i])],
      score: out.scores.data[i],
      box: Array.from(out.boxes.data.subarray(4 * i, 4 * i + 4)),
    });
  }
  return found;
}

/** segment: an image -> {mask: Uint8Array (H * W) of label indices (0 background), width, height, shares}. */
export async function segment(bundle, image) {
  const rgb = toRGB(image);
  const out = await bundle.run("model", { image: imageFeed(rgb) });
  const mask = out.mask.data;
  const labels = bundle.info.labels;
  const counts = new Array(labels.length).fill(0);
  for (const c of mask) if (c < labels.length) counts[c]++;
  const shares = {};
  counts.forEach((c, i) => { if (i > 0 && c > 0) shares[labels[i]] = c / mask.length; });
  return { mask, width: rgb.width, height: rgb.height, shares };
}

/** A colour per class (background white), for drawing masks and boxes. */
export function palette(k) {
  const out = [[255, 255, 255]];
  for (let i = 1; i < k; i++) {
    const h = ((i - 1) * 0.618034) % 1;
    const f = (n) => {
      const x = (n + h * 6) % 6;
      return Math.round(255 * (0.85 - 0.65 * Math.max(0, Math.min(1, Math.min(x, 4 - x)))));
    };
    out.push([f(5), f(3), f(1)]);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The KV cache (serve/kv_cache.py): past_key_values.{i}.key|value (N, Hd, P, Dh), present.* after a call

class KVCache {
  constructor(layers, heads, headDim, batch) {
    this.layers = layers; this.heads = heads; this.headDim = headDim;
    this.names = [];
    for (let i = 0; i < layers; i++) for (const kv of ["key", "value"]) this.names.push(`past_key_values.${i}.${kv}`);
    this.reset(batch);
  }

  reset(batch) {
    this.batch = batch;
    this.past = {};
    for (const n of this.names) this.past[n] = { type: "float32", data: new Float32Array(0), dims: [batch, this.heads, 0, this.headDim] };
  }

  get length() { return this.past[this.names[0]].dims[2]; }

  feeds() { return { ...this.past }; }

  update(outputs) {
    for (const n of this.names) this.past[n] = outputs[n.replace("past_key_values.", "present.")];
  }

  /** Keep the rows `rows` in that order (a beam search's surviving parents). */
  select(rows) {
    for (const n of this.names) this.past[n] = pickRows(this.past[n], rows);
    this.batch = rows.length;
  }
}

function cacheOf(info) {
  const c = info.cache ?? info;
  return [Number(c.layers), Number(c.heads), Number(c.head_dim)];
}

// ---------------------------------------------------------------------------------------------
// Text generation (serve/tasks/textgen.py): UTF-8 bytes in and out, greedy or sampled

/** A seeded uniform [0, 1) generator (mulberry32); not numpy's stream: only greedy output matches Python's. */
export function rng(seed) {
  let a = (seed ?? Math.floor(Math.random() * 2 ** 32)) >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function argmax(x, start = 0, end = x.length) {
  let best = start;
  for (let i = start + 1; i < end; i++) if (x[i] > x[best]) best = i;
  return best - start;
}

/** The next byte from one row's logits: argmax when greedy, else a draw (temperature, top-k, top-p). */
export function choose(logits, { temperature = 0.8, topK = 0, topP = 1.0 }, random) {
  if (temperature === 0 || topK === 1) return argmax(logits);
  const v = logits.length;
  let max = -Infinity;
  for (const x of logits) max = Math.max(max, x);
  let z = Array.from(logits, (x) => (x - max) / temperature);
  if (topK && topK < v) {
    const kth = [...z].sort((a, b) => b - a)[topK - 1];
    z = z.map((x) => (x < kth ? -Infinity : x));
  }
  let p = z.map(Math.exp);
  let sum = p.reduce((a, b) => a + b, 0);
  p = p.map((x) => x / sum);
  if (topP < 1) {
    const order = p.map((_, i) => i).sort((a, b) => p[b] - p[a]);
    let before = 0;
    const keep = new Array(v).fill(false);
    for (const i of order) { if (before < topP) keep[i] = true; before += p[i]; }
    p = p.map((x, i) => (keep[i] ? x : 0));
    sum = p.reduce((a, b) => a + b, 0);
    p = p.map((x) => x / sum);
  }
  const u = random();
  let acc = 0;
  for (let i = 0; i < v; i++) { acc += p[i]; if (u < acc) return i; }
  return v - 1;
}

/**
 * Generate text from a prompt, one step per byte: yields {byte, text (the complete characters it
 * released), done}; the last step has `bytes`, everything generated. Settings: temperature (0 greedy),
 * topK, topP, maxNewTokens, seed. The graph reads at most `info.context` bytes: the prompt's last
 * context - 1 are kept, and a full context slides (the cache rebuilt from the last three quarters).
 */
export async function* generate(bundle, prompt, settings = {}) {
  const s = {
    temperature: settings.temperature ?? bundle.inference.temperature ?? 0.8,
    topK: settings.topK ?? bundle.inference.top_k ?? 0,
    topP: settings.topP ?? bundle.inference.top_p ?? 1.0,
    maxNewTokens: settings.maxNewTokens ?? bundle.inference.max_new_tokens ?? 200,
  };
  if (!(Number.isFinite(s.temperature) && s.temperature >= 0)) throw new BundleError(`temperature must be a number >= 0 (0: greedy), got ${settings.temperature}`);
  if (!(Number.isFinite(s.topP) && s.topP > 0 && s.topP <= 1)) throw new BundleError(`top_p must be in (0, 1], got ${settings.topP}`);
  if (!(Number.isInteger(s.topK) && s.topK >= 0)) throw new BundleError(`top_k must be an integer >= 0 (0: off), got ${settings.topK}`);
  if (!(Number.isInteger(s.maxNewTokens) && s.maxNewTokens >= 1)) throw new BundleError(`max_new_tokens must be an integer >= 1, got ${settings.maxNewTokens}`);
  const context = Number(bundle.info.context);
  let bytes = typeof prompt === "string" ? new TextEncoder().encode(prompt) : Uint8Array.from(prompt);
  if (!bytes.length) throw new BundleError("the prompt is empty: type the start of a text");
  bytes = bytes.slice(Math.max(0, bytes.length - Math.max(1, context - 1)));
  const [layers, heads, headDim] = cacheOf(bundle.info);
  const cache = new KVCache(layers, heads, headDim, 1);
  const random = rng(settings.seed);
  let row = Array.from(bytes);
  let width = 0; // the attention mask's width: cache + new bytes

  const prefill = async (ids) => {
    cache.reset(1);
    width = ids.length;
    const out = await bundle.run("model", { input_ids: i64(ids, [1, ids.length]), attention_mask: i64(ids.map(() => 1), [1, ids.length]), ...cache.feeds() });
    cache.update(out);
    const v = out.logits.dims[2];
    return out.logits.data.subarray((ids.length - 1) * v, ids.length * v);
  };
  const step = async (token) => {
    row.push(token);
    if (width + 1 > context) return prefill(row.slice(row.length - Math.floor((context * 3) / 4)));
    width += 1;
    const out = await bundle.run("model", { input_ids: i64([token], [1, 1]), attention_mask: i64(new Array(width).fill(1), [1, width]), ...cache.feeds() });
    cache.update(out);
    return out.logits.data;
  };

  const decoder = new TextDecoder("utf-8");
  const generated = [];
  let logits = await prefill(row);
  for (let i = 0; i < s.maxNewTokens; i++) {
    const token = choose(logits, s, random);
    generated.push(token);
    const last = i === s.maxNewTokens - 1;
    const text = decoder.decode(Uint8Array.of(token), { stream: !last });
    if (last) {
      yield { byte: token, text, done: true, bytes: Uint8Array.from(generated) };
      return;
    }
    yield { byte: token, text, done: false };
    logits = await step(token);
  }
}

/** generate() to the end: {text, bytes, steps, seconds}. */
export async function complete(bundle, prompt, settings = {}) {
  const t0 = performance.now();
  let text = "", bytes = new Uint8Array(0), steps = 0;
  for await (const st of generate(bundle, prompt, settings)) {
    text += st.text;
    steps += 1;
    if (st.done) bytes = st.bytes;
  }
  return { text, bytes, steps, seconds: (performance.now() - t0) / 1000 };
}

// ---------------------------------------------------------------------------------------------
// Speech recognition (serve/tasks/asr.py): 16 kHz mono float32 in, text and segments out

const PAD = 0, BOS = 1, EOS = 2;
const RATE = 16000;

function decodeIds(vocab, ids) {
  let s = "";
  for (const i of ids) {
    if (i === EOS) break;
    if (i > EOS) s += vocab[i];
  }
  return s.split(" ").filter(Boolean).join(" ");
}

function logSoftmax(x) {
  let max = -Infinity;
  for (const v of x) max = Math.max(max, v);
  const y = Array.from(x, (v) => v - max);
  let sum = 0;
  for (const v of y) sum += Math.exp(v);
  const l = Math.log(sum);
  return y.map((v) => v - l);
}

function logaddexp(x, y) { // numpy's npy_logaddexp
  if (x === y) return x + Math.LN2;
  const d = x - y;
  if (d > 0) return x + Math.log1p(Math.exp(-d));
  if (d <= 0) return y + Math.log1p(Math.exp(d));
  return x + y;
}

/** The energy voice-activity detector (serve's Vad): 30 ms frames, speech 12 dB over the floor. */
export const VAD = { frame: 0.03, marginDb: 12.0, floorDb: -50.0, minGap: 0.35, minSpeech: 0.12, pad: 0.2 };

function framesDb(wave, vad = VAD) {
  const n = Math.max(1, Math.trunc(vad.frame * RATE));
  const count = Math.floor(wave.length / n);
  if (count === 0) return [-120.0];
  const out = new Array(count);
  for (let f = 0; f < count; f++) {
    let s = 0;
    for (let i = f * n; i < (f + 1) * n; i++) s += wave[i] * wave[i];
    out[f] = 10 * Math.log10(s / n + 1e-12);
  }
  return out;
}

function percentile(values, q) {
  const s = [...values].sort((a, b) => a - b);
  const pos = (q / 100) * (s.length - 1);
  const lo = Math.floor(pos), hi = Math.min(lo + 1, s.length - 1);
  return s[lo] + (s[hi] - s[lo]) * (pos - lo);
}

/** Speech regions [start, end] in seconds; [] for silence. */
export function speechRegions(wave, vad = VAD) {
  const db = framesDb(wave, vad);
  const floor = percentile(db, 10);
  let top = -Infinity;
  for (const x of db) top = Math.max(top, x);
  const level = db.length < 10 || top - floor < vad.marginDb ? vad.floorDb + vad.marginDb : Math.max(floor + vad.marginDb, vad.floorDb);
  const regions = [];
  let start = null;
  for (let i = 0; i <= db.length; i++) {
    const a = i < db.length && db[i] > level;
    if (a && start === null) start = i;
    else if (!a && start !== null) { regions.push([start, i]); start = null; }
  }
  const merged = [];
  const gap = vad.minGap / vad.frame;
  for (const r of regions) {
    if (merged.length && r[0] - merged[merged.length - 1][1] < gap) merged[merged.length - 1][1] = r[1];
    else merged.push([...r]);
  }
  const total = wave.length / RATE;
  return merged.filter(([s, e]) => (e - s) * vad.frame >= vad.minSpeech)
    .map(([s, e]) => [Math.max(0, s * vad.frame - vad.pad), Math.min(total, e * vad.frame + vad.pad)]);
}

/** Where to cut a recording so each piece fits the encoder's window (seconds), at pauses. */
export function chunks(wave, window, vad = VAD) {
  const pieces = [];
  for (const [s, e] of speechRegions(wave, vad)) {
    const stack = [[s, e]];
    while (stack.length) {
      const [a, b] = stack.shift();
      if (b - a <= window) { pieces.push([a, b]); continue; }
      const db = framesDb(wave.subarray(Math.trunc((a + window / 3) * RATE), Math.trunc((a + window) * RATE)), vad);
      const cut = a + window / 3 + argmax(db.map((x) => -x)) * vad.frame;
      stack.unshift([a, cut], [cut, b]);
    }
  }
  const joined = [];
  for (const [a, b] of pieces) {
    const last = joined[joined.length - 1];
    if (last && b - last[0] <= window && a - last[1] < 1.0) last[1] = b;
    else joined.push([a, b]);
  }
  return joined;
}

/** Python's round(x, 2) for x >= 0: the hundredth nearest the exact binary value (toFixed), exact ties
 * (x = odd / 8: 0.125, 0.375, ...) to even. */
export function round2(x) {
  const m = x * 8;
  if (Number.isInteger(m) && m % 2 !== 0) {
    const n = Math.floor(x * 100);
    return (n % 2 === 0 ? n : n + 1) / 100;
  }
  return Number(x.toFixed(2));
}

/** Rows `rows` of a tensor (N, ...), in that order (numpy's t[rows]). */
function pickRows(t, rows) {
  const size = t.dims[0] ? t.data.length / t.dims[0] : 0;
  const data = new t.data.constructor(rows.length * size);
  rows.forEach((r, i) => data.set(t.data.subarray(r * size, (r + 1) * size), i * size));
  return { type: t.type, data, dims: [rows.length, ...t.dims.slice(1)] };
}

class Speech {
  constructor(bundle, { beam, maxTokens, ctcWeight, lengthPenalty = 1.0, batch } = {}) {
    const inf = bundle.inference, info = bundle.info;
    this.bundle = bundle;
    this.vocab = info.vocabulary;
    this.beam = beam ?? 1; // greedy unless asked, as the Speech tab
    this.maxTokens = maxTokens ?? inf.max_tokens ?? info.max_tokens ?? 96;
    this.ctcWeight = ctcWeight ?? inf.ctc_weight ?? 0.0;
    if (!(Number.isInteger(this.beam) && this.beam >= 1 && this.beam <= 16)) throw new BundleError(`beam must be an integer 1-16, got ${beam}`);
    if (!(this.ctcWeight >= 0 && this.ctcWeight <= 1)) throw new BundleError(`ctc_weight must be in [0, 1], got ${ctcWeight}`);
    this.lengthPenalty = lengthPenalty;
    this.batch = batch ?? 8; // segments per encoder call (serve's Limits)
    this.window = Number(info.window);
    [this.layers, this.heads, this.headDim] = cacheOf(info);
    this.crossNames = [];
    for (let i = 0; i < this.layers; i++) for (const kv of ["key", "value"]) this.crossNames.push(`cross_key_values.${i}.${kv}`);
  }

  async encode(waves) {
    const longest = Math.max(1, ...waves.map((w) => w.length));
    const data = new Float32Array(waves.length * longest);
    waves.forEach((w, i) => data.set(w, i * longest));
    return this.bundle.run("encoder", {
      waveform: { type: "float32", data, dims: [waves.length, longest] },
      lengths: i64(waves.map((w) => w.length), [waves.length]),
    });
  }

  fixed(enc, w) {
    const out = {};
    const rows = Array.from({ length: enc.states_mask.dims[0] * w }, (_, k) => Math.floor(k / w)); // np.repeat(t, w, 0)
    for (const k of ["states_mask", ...this.crossNames]) out[k] = w === 1 ? enc[k] : pickRows(enc[k], rows);
    return out;
  }

  async greedy(enc) {
    const n = enc.states_mask.dims[0];
    const kv = new KVCache(this.layers, this.heads, this.headDim, n);
    const fixed = this.fixed(enc, 1);
    let token = new Array(n).fill(BOS);
    const out = Array.from({ length: n }, () => []), lps = Array.from({ length: n }, () => []);
    const done = new Array(n).fill(false);
    for (let step = 0; step < this.maxTokens; step++) {
      const r = await this.bundle.run("decoder", { input_ids: i64(token, [n, 1]), ...fixed, ...kv.feeds() });
      const v = r.logits.dims[2];
      const next = [];
      for (let i = 0; i < n; i++) {
        const row = r.logits.data.subarray(i * v, (i + 1) * v);
        const t = done[i] ? PAD : argmax(row);
        out[i].push(t);
        lps[i].push(logSoftmax(row)[t]);
        if (t === EOS) done[i] = true;
        next.push(t);
      }
      if (done.every(Boolean)) break;
      kv.update(r);
      token = next;
    }
    const hyps = out.map((ids, i) => {
      const end = ids.includes(EOS) ? ids.indexOf(EOS) + 1 : ids.length;
      let lp = 0;
      for (let j = 0; j < end; j++) lp += lps[i][j];
      return [[ids.slice(0, end).filter((t) => t > EOS), lp]];
    });
    return { texts: out.map((ids) => decodeIds(this.vocab, ids)), hyps };
  }

  async beamSearch(enc) {
    const n = enc.states_mask.dims[0], w = this.beam;
    const fixed = this.fixed(enc, w);
    const kv = new KVCache(this.layers, this.heads, this.headDim, n * w);
    let token = new Array(n * w).fill(BOS);
    let scores = Array.from({ length: n }, () => Array.from({ length: w }, (_, j) => (j === 0 ? 0 : -Infinity)));
    let seqs = Array.from({ length: n }, () => Array.from({ length: w }, () => []));
    const finished = Array.from({ length: n }, () => []);
    for (let step = 0; step < this.maxTokens; step++) {
      const r = await this.bundle.run("decoder", { input_ids: i64(token, [n * w, 1]), ...fixed, ...kv.feeds() });
      const v = r.logits.dims[2];
      const newScores = Array.from({ length: n }, () => new Array(w).fill(-Infinity));
      const parents = Array.from({ length: n }, () => new Array(w).fill(0));
      const tokens = Array.from({ length: n }, () => new Array(w).fill(PAD));
      for (let i = 0; i < n; i++) {
        const total = new Array(w * v);
        for (let b = 0; b < w; b++) {
          const lp = logSoftmax(r.logits.data.subarray((i * w + b) * v, (i * w + b + 1) * v));
          for (let t = 0; t < v; t++) total[b * v + t] = scores[i][b] + lp[t];
        }
        const order = total.map((_, k) => k).sort((a, b) => total[b] - total[a] || a - b).slice(0, 2 * w);
        let kept = 0;
        for (const flat of order) {
          const s = total[flat];
          if (!Number.isFinite(s)) break;
          const parent = Math.floor(flat / v), tok = flat % v;
          if (tok === EOS) {
            finished[i].push([s / (step + 1) ** this.lengthPenalty, [...seqs[i][parent]], s]);
            continue;
          }
          if (tok === PAD || tok === BOS) continue;
          newScores[i][kept] = s; parents[i][kept] = parent; tokens[i][kept] = tok;
          kept += 1;
          if (kept === w) break;
        }
      }
      for (let i = 0; i < n; i++) if (finished[i].length >= w) newScores[i].fill(-Infinity);
      scores = newScores;
      seqs = seqs.map((row, i) => parents[i].map((p, j) => [...row[p], tokens[i][j]]));
      if (!scores.some((row) => row.some(Number.isFinite))) break;
      kv.update(r);
      kv.select(parents.flatMap((row, i) => row.map((p) => p + i * w)));
      token = tokens.flat();
    }
    const texts = [], hyps = [];
    for (let i = 0; i < n; i++) {
      if (finished[i].length) {
        const ranked = [...finished[i]].sort((a, b) => b[0] - a[0]).slice(0, w);
        texts.push(decodeIds(this.vocab, ranked[0][1]));
        hyps.push(ranked.map((f) => [f[1], f[2]]));
      } else {
        const best = argmax(scores[i]);
        texts.push(decodeIds(this.vocab, seqs[i][best]));
        hyps.push([[seqs[i][best], scores[i][best]]]);
      }
    }
    return { texts, hyps };
  }

  /** The decoder's log P(hypothesis + EOS) for hypothesis k of encoder row rows[k] (one teacher-forced call). */
  async decoderLogLikelihood(enc, rows, hyps) {
    const longest = Math.max(...hyps.map((y) => y.length));
    const ids = [];
    for (const y of hyps) ids.push(BOS, ...y, ...new Array(longest - y.length).fill(PAD));
    const fixed = {};
    for (const k of ["states_mask", ...this.crossNames]) fixed[k] = pickRows(enc[k], rows);
    const kv = new KVCache(this.layers, this.heads, this.headDim, hyps.length);
    const r = await this.bundle.run("decoder", { input_ids: i64(ids, [hyps.length, longest + 1]), ...fixed, ...kv.feeds() });
    const [, t, v] = r.logits.dims;
    return hyps.map((y, i) => {
      const target = [...y, EOS];
      let s = 0;
      target.forEach((c, j) => { s += logSoftmax(r.logits.data.subarray((i * t + j) * v, (i * t + j + 1) * v))[c]; });
      return s;
    });
  }

  /** Where the CTC head reads a row otherwise than the decoder, keep the best of both by both heads. */
  async rescore(enc, result) {
    if (this.ctcWeight <= 0 || !enc.ctc_log_probs) return result.texts;
    const ctc = enc.ctc_log_probs, mask = enc.states_mask;
    const [n, frames] = mask.dims;
    const perFrame = Math.floor(ctc.dims[1] / Math.max(1, frames)), v = ctc.dims[2];
    const texts = [...result.texts], extraRows = [], extra = [], pools = [], lengths = [];
    for (let r = 0; r < n; r++) {
      let real = 0;
      for (let f = 0; f < frames; f++) real += num(mask.data[r * frames + f]);
      const len = real * perFrame;
      lengths.push(len);
      const lp = ctc.data.subarray(r * ctc.dims[1] * v, (r * ctc.dims[1] + len) * v);
      const ids = ctcGreedy(lp, v);
      const pool = new Map(result.hyps[r].map(([h, s]) => [h.join(","), [h, s]]));
      if (!pool.has(ids.join(",")) && ids.length < this.maxTokens) {
        extraRows.push(r); extra.push(ids);
        pool.set(ids.join(","), [ids, null]);
      }
      pools.push(pool);
    }
    if (extra.length) {
      const scores = await this.decoderLogLikelihood(enc, extraRows, extra);
      extraRows.forEach((r, k) => { pools[r].get(extra[k].join(","))[1] = scores[k]; });
    }
    pools.forEach((pool, r) => {
      if (pool.size < 2) return;
      const cands = [...pool.values()];
      const lp = ctc.data.subarray(r * ctc.dims[1] * v, (r * ctc.dims[1] + lengths[r]) * v);
      const ll = ctcLogLikelihood(lp, v, cands.map(([h]) => h));
      const total = cands.map(([, s], k) => (1 - this.ctcWeight) * s + this.ctcWeight * ll[k]);
      texts[r] = decodeIds(this.vocab, cands[argmax(total)][0]);
    });
    return texts;
  }

  async decodeBatch(waves) {
    if (!waves.length) return [];
    const enc = await this.encode(waves);
    const result = this.beam === 1 ? await this.greedy(enc) : await this.beamSearch(enc);
    return this.rescore(enc, result);
  }

  /** Recordings (Float32Array, 16 kHz) -> [{text, segments: [{start, end, text}], seconds, note}]. */
  async transcribeMany(waves) {
    const pieces = waves.map((w) => chunks(w, this.window));
    const flat = [];
    pieces.forEach((p, r) => p.forEach(([a, b]) => flat.push([r, a, b])));
    flat.sort((x, y) => (x[2] - x[1]) - (y[2] - y[1]));
    let texts = [];
    for (let i = 0; i < flat.length; i += this.batch) {
      const part = flat.slice(i, i + this.batch);
      texts = texts.concat(await this.decodeBatch(part.map(([r, a, b]) => waves[r].subarray(Math.trunc(a * RATE), Math.trunc(b * RATE)))));
    }
    const byRecording = waves.map(() => []);
    flat.forEach(([r, a, b], k) => {
      if (texts[k]) byRecording[r].push({ start: round2(a), end: round2(b), text: texts[k] });
    });
    return waves.map((w, r) => {
      const segments = byRecording[r].sort((x, y) => x.start - y.start);
      const note = !pieces[r].length ? "no speech heard" : !segments.length ? "no words recognized" : "";
      return { text: segments.map((s) => s.text).join(" "), segments, seconds: w.length / RATE, note };
    });
  }
}

export function ctcGreedy(logProbs, v) {
  const out = [];
  let prev = -1;
  for (let f = 0; f < logProbs.length / v; f++) {
    const best = argmax(logProbs, f * v, (f + 1) * v);
    if (best !== prev && best > EOS) out.push(best);
    prev = best;
  }
  return out;
}

/** log P(hypothesis | frames) under CTC, the forward algorithm in log space: (T * V) log-probs -> one per hypothesis. */
export function ctcLogLikelihood(logProbs, v, hyps) {
  const frames = logProbs.length / v;
  const longest = Math.max(0, ...hyps.map((y) => y.length));
  const width = 2 * longest + 1;
  return hyps.map((y) => {
    const ext = new Array(width).fill(PAD);
    y.forEach((c, k) => { ext[2 * k + 1] = c; });
    const skip = ext.map((c, s) => s >= 2 && c !== PAD && c !== ext[s - 2]);
    let alpha = new Array(width).fill(-Infinity);
    alpha[0] = logProbs[PAD];
    if (longest) alpha[1] = logProbs[ext[1]];
    for (let t = 1; t < frames; t++) {
      const next = new Array(width);
      for (let s = 0; s < width; s++) {
        const one = s >= 1 ? alpha[s - 1] : -Infinity;
        const two = skip[s] ? alpha[s - 2] : -Infinity;
        next[s] = logaddexp(logaddexp(alpha[s], one), two) + logProbs[t * v + ext[s]];
      }
      alpha = next;
    }
    const end = 2 * y.length;
    return logaddexp(alpha[end], end > 0 ? alpha[end - 1] : -Infinity);
  });
}

/** Transcribe recordings (Float32Array, mono, 16 kHz): beam, maxTokens, ctcWeight default to the bundle's. */
export async function transcribe(bundle, waves, settings = {}) {
  const t0 = performance.now();
  const list = Array.isArray(waves) ? waves : [waves];
  const out = await new Speech(bundle, settings).transcribeMany(list);
  const spent = (performance.now() - t0) / 1000;
  for (const t of out) { t.compute = spent; t.rtf = spent / Math.max(t.seconds, 1e-9); }
  return Array.isArray(waves) ? out : out[0];
}

// ---------------------------------------------------------------------------------------------
// Audio: WAV files, channels, rates

/** A WAV file's bytes -> {rate, samples: Float32Array mono in [-1, 1]} (PCM 8/16/24/32-bit, float 32/64). */
export function parseWav(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const tag = (o) => String.fromCharCode(...bytes.subarray(o, o + 4));
  if (bytes.length < 12 || tag(0) !== "RIFF" || tag(8) !== "WAVE") throw new BundleError("not a WAV file (no RIFF/WAVE header)");
  let fmt = null, data = null;
  for (let o = 12; o + 8 <= bytes.length;) {
    const id = tag(o), size = view.getUint32(o + 4, true);
    if (id === "fmt " && size >= 16) {
      fmt = { format: view.getUint16(o + 8, true), channels: view.getUint16(o + 10, true), rate: view.getUint32(o + 12, true), bits: view.getUint16(o + 22, true) };
      if (fmt.format === 0xfffe && size >= 26) fmt.format = view.getUint16(o + 32, true); // extensible: the subformat's code
    }
    if (id === "data") data = [o + 8, Math.min(size, bytes.length - o - 8)];
    o += 8 + size + (size & 1);
  }
  if (!fmt || !data) throw new BundleError("the WAV file has no fmt or data chunk");
  const { format, channels, rate, bits } = fmt;
  if (format !== 1 && format !== 3) throw new BundleError(`WAV sample format ${format} is not supported (PCM or float only)`);
  if (!channels || !rate || !(format === 3 ? [32, 64] : [8, 16, 24, 32]).includes(bits)) throw new BundleError("the WAV file's header is damaged (its sample format)");
  const width = bits / 8, frames = Math.floor(data[1] / (width * channels));
  const read = (o) => {
    if (format === 3) {
      const x = Math.fround(bits === 64 ? view.getFloat64(o, true) : view.getFloat32(o, true));
      if (!Number.isFinite(x)) throw new BundleError("the audio holds NaN or infinite samples; it cannot be transcribed");
      return Math.max(-1, Math.min(1, Math.fround(x)));
    }
    if (bits === 8) return (bytes[o] - 128) / 128;
    if (bits === 16) return view.getInt16(o, true) / 32768;
    if (bits === 24) return ((bytes[o] | (bytes[o + 1] << 8) | (bytes[o + 2] << 16)) << 8 >> 8) / 8388608;
    if (bits === 32) return Math.fround(view.getInt32(o, true) / 2147483648);
    throw new BundleError(`WAV samples of ${bits} bits are not supported`);
  };
  const samples = new Float32Array(frames);
  for (let f = 0; f < frames; f++) {
    let s = 0;
    for (let c = 0; c < channels; c++) s = Math.fround(s + read(data[0] + (f * channels + c) * width));
    samples[f] = channels === 1 ? s : Math.fround(s / channels);
  }
  if (!frames) throw new BundleError("the audio is empty (0 samples)");
  return { rate, samples };
}

/** A WAV file's bytes -> mono float32 at `rate` Hz (16 kHz: what the speech encoder takes). */
export function decodeWav(bytes, rate = RATE) {
  const { rate: from, samples } = parseWav(bytes);
  return resample(samples, from, rate);
}

/** Resample mono float32 from `rate` to `target` Hz: a windowed-sinc filter (Kaiser, beta 8.6, 32 zero
 * crossings a side); close to, not sample for sample, the Python server's soxr. */
export function resample(wave, rate, target = RATE) {
  if (rate === target || !wave.length) return wave;
  const ratio = target / rate, scale = Math.min(1, ratio), n = Math.round(wave.length * ratio);
  const half = 32, cutoff = 0.97, steps = 64; // window table: `steps` entries per zero crossing
  const bessel = (x) => { let s = 1, t = 1; for (let k = 1; k < 25; k++) { t *= (x / (2 * k)) ** 2; s += t; } return s; };
  const table = new Float64Array(half * steps + 2);
  for (let i = 0; i < table.length; i++) {
    const d = Math.min(i / steps, half), x = d * cutoff;
    const win = bessel(8.6 * Math.sqrt(Math.max(0, 1 - (d / half) ** 2))) / bessel(8.6);
    table[i] = (x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x)) * win;
  }
  const kernel = (d) => { // d in zero crossings, |d| <= half
    const a = Math.abs(d) * steps, i = Math.floor(a);
    return table[i] + (table[i + 1] - table[i]) * (a - i);
  };
  const out = new Float32Array(n), span = half / scale;
  for (let i = 0; i < n; i++) {
    const centre = i / ratio;
    let acc = 0, wsum = 0;
    for (let j = Math.ceil(centre - span); j <= Math.floor(centre + span); j++) {
      const k = kernel((j - centre) * scale);
      wsum += k;
      if (j >= 0 && j < wave.length) acc += wave[j] * k;
    }
    out[i] = acc / wsum;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Image generation: the whole DDIM sampler is one call of sampler.onnx

/** Standard-normal noise (N, C, S, S) from a seed (Box-Muller on mulberry32; not numpy's: pass `noise` to match Python). */
export function gaussian(count, seed) {
  const u = rng(seed), out = new Float32Array(count);
  for (let i = 0; i < count; i += 2) {
    const r = Math.sqrt(-2 * Math.log(1 - u())), a = 2 * Math.PI * u();
    out[i] = r * Math.cos(a);
    if (i + 1 < count) out[i + 1] = r * Math.sin(a);
  }
  return out;
}

/** imagegen: `count` images of digit `label` -> [{data: Uint8Array (S * S), width, height, channels: 1}]. */
export async function generateDigits(bundle, { label, count = 1, guidance, steps, seed, noise } = {}) {
  const info = bundle.info, inf = bundle.inference;
  const c = Number(info.channels ?? 1), h = Number(info.image_size), w = h;
  const labels = info.labels ?? [];
  const index = typeof label === "number" ? label : labels.indexOf(String(label));
  if (!Number.isInteger(index) || index < 0 || index >= labels.length) throw new BundleError(`label must be one of ${labels.join(", ")}, got ${label}`);
  steps = steps ?? inf.steps ?? 25;
  guidance = guidance ?? inf.guidance ?? 2.0;
  const total = (info.alphas_cumprod ?? []).length || Infinity;
  if (!(Number.isInteger(count) && count >= 1 && count <= 256)) throw new BundleError(`count must be an integer 1-256, got ${count}`);
  if (!(Number.isInteger(steps) && steps >= 1 && steps <= total)) throw new BundleError(`steps must be an integer 1-${total}, got ${steps}`);
  if (!(Number.isFinite(guidance) && guidance >= 0 && guidance <= 20)) throw new BundleError(`guidance must be a number in [0, 20], got ${guidance}`);
  if (noise && noise.length !== count * c * h * w) throw new BundleError(`the noise holds ${noise.length} values; ${count} images need ${count * c * h * w} (${count} x ${c} x ${h} x ${w} float32)`);
  const out = await bundle.run("sampler", {
    noise: { type: "float32", data: noise ?? gaussian(count * c * h * w, seed), dims: [count, c, h, w] },
    label: i64(new Array(count).fill(index), [count]),
    guidance: { type: "float32", data: new Float32Array(count).fill(guidance), dims: [count] },
    steps: i64([steps], []),
  });
  const [, ih, iw, ic] = out.images.dims;
  const size = ih * iw * ic;
  return Array.from({ length: count }, (_, k) => ({ data: out.images.data.slice(k * size, (k + 1) * size), width: iw, height: ih, channels: ic }));
}
