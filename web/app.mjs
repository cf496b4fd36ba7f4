// The page: a tab per bundle in site.json, each running js/littlebook.mjs over onnxruntime-web.
// Models load when their tab first opens; window.littlebook holds the timings and the last answers
// (the browser test reads them).
import * as lb from "./littlebook.mjs";

const opened = performance.now();
const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k);
  return e;
};
const ms = (x) => (x < 10 ? x.toFixed(1) : x.toFixed(0)) + " ms";
const mb = (b) => (b / 1e6).toFixed(2) + " MB";

const state = { stats: {}, last: {}, backend: null, errors: [] };
window.littlebook = state;

let ort, providers;
async function runtime(site) {
  const gpu = site.runtime.webgpu && "gpu" in navigator && (await navigator.gpu.requestAdapter().catch(() => null));
  ort = await import(gpu ? "./ort/ort.webgpu.min.mjs" : "./ort/ort.wasm.min.mjs");
  ort.env.wasm.wasmPaths = new URL("./ort/", location.href).href;
  const asked = Number(new URLSearchParams(location.search).get("threads")); // ?threads=N: WASM threads
  ort.env.wasm.numThreads = self.crossOriginIsolated ? (asked >= 1 ? asked : Math.max(1, Math.min(4, Math.floor((navigator.hardwareConcurrency || 1) / 2)))) : 1;
  providers = gpu ? ["webgpu", "wasm"] : ["wasm"];
  state.backend = gpu ? "webgpu" : `wasm, ${ort.env.wasm.numThreads} thread${ort.env.wasm.numThreads > 1 ? "s" : ""}`;
  const bytes = Object.values(site.runtime.files).reduce((a, b) => a + b, 0);
  $("#runtime").textContent = `onnxruntime-web ${ort.env.versions?.web ?? ""} on ${state.backend}` +
    (self.crossOriginIsolated ? "" : " (not cross-origin isolated: one thread; serve with serve.py for more)") + `; runtime files ${mb(bytes)}`;
}

const bundles = {};
function load(t) {
  if (!bundles[t.task]) {
    bundles[t.task] = (async () => {
      const t0 = performance.now();
      const base = `models/${t.task}/`;
      const read = async (name) => {
        const r = await fetch(base + name);
        if (!r.ok) throw new Error(`${base}${name}: HTTP ${r.status}`);
        return new Uint8Array(await r.arrayBuffer());
      };
      const b = await lb.openBundle(ort, read, { variant: t.variant, sessionOptions: { executionProviders: providers } });
      state.stats[t.task] = { variant: t.variant, bytes: t.bytes, loadMs: performance.now() - t0, firstAnswerMs: null, lastMs: null, answers: 0 };
      timing();
      return b;
    })();
  }
  return bundles[t.task];
}

function answered(task, spent, result) {
  const s = state.stats[task];
  if (s.firstAnswerMs === null) s.firstAnswerMs = performance.now() - opened;
  s.lastMs = spent;
  s.answers += 1;
  state.last[task] = result;
  timing();
}

function timing() {
  const rows = $("#timing-rows");
  rows.replaceChildren(...Object.entries(state.stats).map(([task, s]) => el("tr", {},
    el("td", {}, task), el("td", {}, s.variant), el("td", {}, mb(s.bytes)), el("td", {}, ms(s.loadMs)),
    el("td", {}, s.firstAnswerMs === null ? "" : ms(s.firstAnswerMs)), el("td", {}, s.lastMs === null ? "" : ms(s.lastMs)),
    el("td", {}, String(s.answers)))));
}

function guard(status, fn) {
  return async (...args) => {
    try {
      await fn(...args);
    } catch (e) {
      status.textContent = `error: ${e.message ?? e}`;
      status.classList.add("error");
      state.errors.push(String(e.message ?? e));
    }
  };
}

// ---------------------------------------------------------------------------------------------
// Images

function pixels(source) { // an <img>, <canvas> or ImageBitmap -> {data RGBA, width, height, channels 4}
  const w = source.naturalWidth ?? source.width, h = source.naturalHeight ?? source.height;
  const c = new OffscreenCanvas(w, h), g = c.getContext("2d", { willReadFrequently: true });
  g.drawImage(source, 0, 0, w, h);
  return { data: new Uint8Array(g.getImageData(0, 0, w, h).data.buffer), width: w, height: h, channels: 4 };
}

function checked(image) { // the graphs' own limit (and the Python server's)
  if (Math.max(image.width, image.height) > 4096 || Math.min(image.width, image.height) < 8) {
    throw new Error(`the image is ${image.width}x${image.height} pixels; each side must be between 8 and 4096`);
  }
  return image;
}

async function fileImage(file) {
  return createImageBitmap(file).catch(() => { throw new Error("that file is not an image this browser can read"); });
}

function picker(accept, onfile) {
  const input = el("input", { type: "file", accept });
  input.addEventListener("change", () => input.files[0] && onfile(input.files[0]));
  return input;
}

function examples(t, b, onpick) {
  const box = el("div", { class: "examples" });
  for (const e of b.manifest.examples ?? []) {
    if (!/\.(png|jpe?g)$/i.test(e)) continue;
    const img = el("img", { src: `models/${t.task}/${e}`, alt: e, title: e });
    img.addEventListener("click", () => img.decode().then(() => onpick(img)));
    box.append(img);
  }
  return box;
}

function drawScene(canvas, source, w, h) {
  canvas.width = w; canvas.height = h;
  const g = canvas.getContext("2d");
  g.drawImage(source, 0, 0, w, h);
  return g;
}

// ---------------------------------------------------------------------------------------------
// Tabs

const TABS = {
  async classify(t, panel) {
    const b = await load(t);
    const pad = el("canvas", { class: "pad", width: 280, height: 280, "aria-label": "sketchpad" });
    const g = pad.getContext("2d", { willReadFrequently: true });
    const clear = () => { g.fillStyle = "#fff"; g.fillRect(0, 0, 280, 280); };
    clear();
    const big = el("div", { class: "big" }, "?"), bars = el("div", { class: "bars" }), status = el("p", { class: "status" }, "draw a digit");
    let busy = false, again = false;
    const predict = guard(status, async (image) => {
      if (busy) { again = true; return; }
      busy = true;
      const t0 = performance.now();
      let r;
      try { r = await lb.classify(b, image); } finally { busy = false; }
      const spent = performance.now() - t0;
      big.textContent = r.label;
      bars.replaceChildren(...r.ranked.slice(0, 3).flatMap((x) => [el("span", {}, x.label),
        el("div", { class: "bar", style: `width:${Math.max(1, 100 * x.prob)}%` }), el("span", {}, (100 * x.prob).toFixed(1) + "%")]));
      status.textContent = `${ms(spent)} (${b.variant})`;
      status.classList.remove("error");
      answered("classify", spent, { label: r.label, probs: r.probs, image: image.source ?? null });
      if (again) { again = false; predict(padImage()); }
    });
    const padImage = () => ({ ...pixels(pad), source: pad.toDataURL("image/png") });
    let last = null;
    pad.addEventListener("pointerdown", (e) => { pad.setPointerCapture(e.pointerId); last = [e.offsetX, e.offsetY]; line(e); });
    const line = (e) => {
      const k = pad.width / pad.clientWidth;
      g.strokeStyle = "#000"; g.lineWidth = 18; g.lineCap = g.lineJoin = "round";
      g.beginPath(); g.moveTo(last[0] * k, last[1] * k); g.lineTo(e.offsetX * k, e.offsetY * k); g.stroke();
      last = [e.offsetX, e.offsetY];
    };
    let tick = 0;
    pad.addEventListener("pointermove", (e) => {
      if (!last) return;
      line(e);
      if (performance.now() - tick > 120) { tick = performance.now(); predict(padImage()); }
    });
    const up = () => { if (last) { last = null; predict(padImage()); } };
    pad.addEventListener("pointerup", up);
    pad.addEventListener("pointercancel", up);
    const upload = picker("image/*", guard(status, async (f) => predict(pixels(await fileImage(f)))));
    panel.append(el("div", { class: "row" },
      el("div", { class: "col" }, pad, el("div", {}, el("button", { class: "act secondary", onclick: () => { clear(); big.textContent = "?"; bars.replaceChildren(); } }, "Clear")),
        el("label", {}, "or an image file", upload)),
      el("div", { class: "col" }, big, bars, status, el("p", { class: "note" }, "held-out examples:"),
        examples(t, b, (img) => predict(pixels(img))))));
  },

  async detect(t, panel) {
    const b = await load(t);
    const canvas = el("canvas", { width: 320, height: 240 }), list = el("pre", { class: "out" }), status = el("p", { class: "status" }, "pick an example or an image file");
    const score = el("input", { type: "range", min: 0.05, max: 0.95, step: 0.05, value: b.inference.score_threshold ?? 0.4 });
    const colours = lb.palette(b.info.labels.length + 1);
    let current = null;
    const run = guard(status, async () => {
      if (!current) return;
      const image = checked(pixels(current));
      const t0 = performance.now();
      const found = await lb.detect(b, image, { scoreThreshold: Number(score.value) });
      const spent = performance.now() - t0;
      const g = drawScene(canvas, current, image.width, image.height);
      g.lineWidth = 2; g.font = "bold 13px sans-serif";
      for (const d of found) {
        const [x1, y1, x2, y2] = d.box, c = colours[b.info.labels.indexOf(d.label) + 1];
        g.strokeStyle = g.fillStyle = `rgb(${c.map((v) => v * 0.7).join(",")})`;
        g.strokeRect(x1, y1, x2 - x1, y2 - y1);
        g.fillText(`${d.label} ${d.score.toFixed(2)}`, x1, Math.max(12, y1 - 3));
      }
      list.textContent = found.map((d) => `${d.label}  ${d.score.toFixed(3)}  [${d.box.map((v) => v.toFixed(1)).join(", ")}]`).join("\n") || "nothing found";
      status.textContent = `${found.length} detection${found.length === 1 ? "" : "s"} in ${ms(spent)} (${b.variant})`;
      status.classList.remove("error");
      answered("detect", spent, { detections: found });
    });
    score.addEventListener("input", run);
    const upload = picker("image/*", guard(status, async (f) => { current = await fileImage(f); await run(); }));
    panel.append(el("div", { class: "row" },
      el("div", { class: "col" }, el("label", {}, "an image file", upload), examples(t, b, (img) => { current = img; run(); }),
        el("label", {}, "score threshold", score)),
      el("div", { class: "col" }, canvas, status, list)));
  },

  async segment(t, panel) {
    const b = await load(t);
    const canvas = el("canvas", { width: 320, height: 240 }), legend = el("div", { class: "legend" }), status = el("p", { class: "status" }, "pick an example or an image file");
    const colours = lb.palette(b.info.labels.length);
    const run = guard(status, async (source) => {
      const image = checked(pixels(source));
      const t0 = performance.now();
      const r = await lb.segment(b, image);
      const spent = performance.now() - t0;
      const g = drawScene(canvas, source, image.width, image.height);
      const over = g.getImageData(0, 0, image.width, image.height);
      r.mask.forEach((c, p) => {
        if (!c) return;
        for (let k = 0; k < 3; k++) over.data[4 * p + k] = (over.data[4 * p + k] + colours[c][k]) >> 1;
      });
      g.putImageData(over, 0, 0);
      legend.replaceChildren(...Object.entries(r.shares).map(([label, share]) =>
        el("span", { class: "chip", style: `background: rgb(${colours[b.info.labels.indexOf(label)].join(",")})` }, `${label} ${(100 * share).toFixed(1)}%`)));
      status.textContent = `${ms(spent)} (${b.variant})`;
      status.classList.remove("error");
      answered("segment", spent, { shares: r.shares });
    });
    const upload = picker("image/*", guard(status, async (f) => run(await fileImage(f))));
    panel.append(el("div", { class: "row" },
      el("div", { class: "col" }, el("label", {}, "an image file", upload), examples(t, b, run)),
      el("div", { class: "col" }, canvas, legend, status)));
  },

  async textgen(t, panel) {
    const b = await load(t);
    const prompt = el("textarea", { "aria-label": "prompt" });
    prompt.value = "The module ";
    const temp = el("input", { type: "number", min: 0, max: 5, step: 0.1, value: b.inference.temperature ?? 0.8, "aria-label": "temperature" });
    const count = el("input", { type: "number", min: 1, max: 2000, step: 1, value: b.inference.max_new_tokens ?? 200, "aria-label": "max new bytes" });
    const seed = el("input", { type: "number", min: 0, step: 1, placeholder: "random", "aria-label": "seed" });
    const out = el("pre", { class: "out", "aria-label": "continuation" }), status = el("p", { class: "status" });
    const go = el("button", { class: "act" }, "Generate"), stop = el("button", { class: "act secondary", disabled: "" }, "Stop");
    let stopping = false;
    stop.addEventListener("click", () => { stopping = true; });
    go.addEventListener("click", guard(status, async () => {
      go.disabled = true; stop.disabled = false; stopping = false;
      out.textContent = ""; status.classList.remove("error");
      const t0 = performance.now();
      let n = 0, bytes = [], painted = t0;
      try {
        for await (const st of lb.generate(b, prompt.value, { temperature: Number(temp.value), maxNewTokens: Math.round(Number(count.value)),
          seed: seed.value === "" ? undefined : Number(seed.value) })) {
          out.textContent += st.text;
          bytes.push(st.byte);
          n += 1;
          if (performance.now() - painted > 50 || st.done) { // let the page paint and Stop be pressed
            status.textContent = `${n} bytes, ${(n / ((performance.now() - t0) / 1000)).toFixed(0)} bytes/s (${b.variant})`;
            await new Promise((r) => requestAnimationFrame(r));
            painted = performance.now();
          }
          if (stopping) { status.textContent += "; stopped"; break; }
        }
      } finally {
        go.disabled = false; stop.disabled = true;
      }
      const spent = performance.now() - t0;
      const rate = n / (spent / 1000);
      state.last.tokensPerSecond = rate;
      answered("textgen", spent, { text: out.textContent, bytes: btoa(String.fromCharCode(...bytes)), tokensPerSecond: rate });
    }));
    panel.append(el("div", { class: "col" }, prompt,
      el("div", { class: "row" }, el("label", {}, "temperature (0: greedy)", temp), el("label", {}, "bytes", count), el("label", {}, "seed", seed), go, stop),
      out, status));
  },

  async asr(t, panel) {
    const b = await load(t);
    const out = el("pre", { class: "out", "aria-label": "transcript" }), status = el("p", { class: "status" }, "an audio file, an example, or the microphone");
    const beam = el("input", { type: "number", min: 1, max: 16, step: 1, value: b.inference.beam ?? 1, "aria-label": "beam" });
    const show = (r, spent) => {
      out.textContent = (r.text || `(${r.note})`) + "\n\n" + r.segments.map((s) => `[${s.start.toFixed(2)}-${s.end.toFixed(2)} s] ${s.text}`).join("\n");
      status.textContent = `${r.seconds.toFixed(2)} s of audio in ${ms(spent)}: real-time factor ${(spent / 1000 / Math.max(r.seconds, 1e-9)).toFixed(3)} (${b.variant})`;
      status.classList.remove("error");
    };
    const run = guard(status, async (wave, settings = {}) => {
      const t0 = performance.now();
      const r = await lb.transcribe(b, wave, { beam: Math.round(Number(beam.value)), ...settings });
      const spent = performance.now() - t0;
      show(r, spent);
      answered("asr", spent, r);
    });
    const decode = async (bytes) => {
      if (String.fromCharCode(...bytes.subarray(0, 4)) === "RIFF") { // WAV as the server reads it (its errors too)
        return lb.decodeWav(bytes);
      }
      {
        const ctx = new OfflineAudioContext(1, 1, 16000);
        const audio = await ctx.decodeAudioData(bytes.buffer.slice(0)).catch(() => { throw new Error("that file is not audio this browser can read"); });
        return toMono16k(audio);
      }
    };
    const upload = picker("audio/*", guard(status, async (f) => run(await decode(new Uint8Array(await f.arrayBuffer())))));
    const ex = el("div", { class: "examples" });
    for (const e of b.manifest.examples ?? []) {
      if (!e.endsWith(".wav")) continue;
      ex.append(el("button", { class: "act secondary", onclick: guard(status, async () => run(await decode(new Uint8Array(await (await fetch(`models/asr/${e}`)).arrayBuffer())))) },
        e.split("/").pop().replace(/\.wav$/, "")));
    }
    // the microphone: samples gathered at the device's rate, the transcript redone every second while recording
    const rec = el("button", { class: "act" }, "Record");
    let mic = null;
    rec.addEventListener("click", guard(status, async () => {
      if (mic) { await mic.stop(); return; }
      if (!navigator.mediaDevices) throw new Error("the microphone needs the page served over https or from localhost");
      const stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false } });
      const ctx = new AudioContext();
      const source = ctx.createMediaStreamSource(stream);
      const node = ctx.createScriptProcessor(4096, 1, 1);
      const parts = [];
      node.onaudioprocess = (e) => parts.push(new Float32Array(e.inputBuffer.getChannelData(0)));
      source.connect(node); node.connect(ctx.destination);
      const heard = () => {
        const all = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
        let o = 0; for (const p of parts) { all.set(p, o); o += p.length; }
        return lb.resample(all, ctx.sampleRate, 16000);
      };
      let live = true;
      const loop = async () => {
        while (live) {
          await new Promise((r) => setTimeout(r, 1000));
          if (live && parts.length) await run(heard(), { beam: 1 });
        }
      };
      const looping = loop();
      rec.textContent = "Stop";
      mic = {
        stop: async () => {
          live = false; await looping;
          node.disconnect(); source.disconnect(); stream.getTracks().forEach((tr) => tr.stop()); await ctx.close();
          mic = null; rec.textContent = "Record";
          await run(heard());
        },
      };
    }));
    panel.append(el("div", { class: "row" },
      el("div", { class: "col" }, el("label", {}, "an audio file", upload), el("div", {}, rec), el("label", {}, "beam", beam), el("p", { class: "note" }, "held-out recordings:"), ex),
      el("div", { class: "col" }, out, status)));
  },

  async imagegen(t, panel) {
    const b = await load(t);
    const labels = b.info.labels;
    const label = el("select", { "aria-label": "digit" }, ...labels.map((l) => el("option", { value: l }, l)));
    const count = el("input", { type: "number", min: 1, max: 64, value: 8, "aria-label": "images" });
    const steps = el("input", { type: "number", min: 1, max: 1000, value: b.inference.steps ?? 25, "aria-label": "steps" });
    const guidance = el("input", { type: "number", min: 0, max: 20, step: 0.5, value: b.inference.guidance ?? 2, "aria-label": "guidance" });
    const gallery = el("div", { class: "gallery" }), status = el("p", { class: "status" });
    const go = el("button", { class: "act" }, "Generate");
    go.addEventListener("click", guard(status, async () => {
      go.disabled = true;
      try {
        const t0 = performance.now();
        const images = await lb.generateDigits(b, { label: label.value, count: Math.round(Number(count.value)), steps: Math.round(Number(steps.value)), guidance: Number(guidance.value) });
        const spent = performance.now() - t0;
        gallery.replaceChildren(...images.map((im) => {
          const c = el("canvas", { class: "pixels", width: im.width, height: im.height, style: "width: 84px; height: 84px" });
          const d = c.getContext("2d").createImageData(im.width, im.height);
          im.data.forEach((v, p) => { d.data.set([v, v, v, 255], 4 * p); });
          c.getContext("2d").putImageData(d, 0, 0);
          return c;
        }));
        status.textContent = `${images.length} images in ${ms(spent)}: one sampler.onnx call, ${steps.value} steps (${b.variant})`;
        status.classList.remove("error");
        answered("imagegen", spent, { count: images.length });
      } finally {
        go.disabled = false;
      }
    }));
    panel.append(el("div", { class: "col" }, el("div", { class: "row" }, el("label", {}, "digit", label), el("label", {}, "images", count),
      el("label", {}, "steps", steps), el("label", {}, "guidance", guidance), go), gallery, status));
  },
};

async function toMono16k(audio) {
  const frames = Math.ceil(audio.duration * 16000);
  const ctx = new OfflineAudioContext(1, Math.max(1, frames), 16000);
  const src = ctx.createBufferSource();
  src.buffer = audio; src.connect(ctx.destination); src.start();
  return (await ctx.startRendering()).getChannelData(0);
}

async function main() {
  const site = await (await fetch("site.json")).json();
  await runtime(site);
  const tabs = $("#tabs"), panels = $("#panels");
  const built = {};
  const show = (t) => {
    for (const btn of tabs.children) btn.setAttribute("aria-selected", String(btn.dataset.task === t.task));
    for (const p of panels.children) p.classList.toggle("active", p.dataset.task === t.task);
    if (!built[t.task]) {
      const panel = $(`[data-task="${t.task}"]`, panels);
      const loading = el("p", { class: "status" }, `loading ${t.task} (${t.variant}, ${mb(t.bytes)}) ...`);
      panel.append(loading);
      built[t.task] = TABS[t.task](t, panel).then(() => loading.remove(), (e) => {
        loading.textContent = `error: ${e.message ?? e}`; loading.classList.add("error"); state.errors.push(String(e.message ?? e));
      });
    }
    return built[t.task];
  };
  for (const t of site.tasks) {
    if (!TABS[t.task]) continue;
    tabs.append(el("button", { role: "tab", "data-task": t.task, onclick: () => show(t) }, t.title));
    panels.append(el("section", { class: "panel", "data-task": t.task, role: "tabpanel" },
      el("p", { class: "note" }, `${t.task}: ${t.variant} variant, ${mb(t.bytes)}` + (t.value == null ? "" : `, ${t.metric} ${Number(t.value).toFixed(2)}` + (t.fp32 == null || t.variant === "fp32" ? "" : ` (fp32 ${Number(t.fp32).toFixed(2)})`)))));
  }
  const first = site.tasks.find((t) => t.task === location.hash.slice(1)) ?? site.tasks[0];
  state.ready = first ? show(first) : Promise.resolve();
  state.show = (task) => show(site.tasks.find((t) => t.task === task));
}

state.started = main().catch((e) => {
  $("#runtime").textContent = `error: ${e.message ?? e}`;
  $("#runtime").classList.add("error");
  state.errors.push(String(e.message ?? e));
});
