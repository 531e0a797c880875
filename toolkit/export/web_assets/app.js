// Classify an image entirely in the browser, with the same pixels as toolkit.runtime:
// decode (EXIF orientation applied, no colour-profile conversion, transparency over white),
// then Pillow's BILINEAR resize (a port of Pillow's fixed-point resampler, below), then the
// ONNX model (raw 0..255 RGB, NHWC) and the run's operating point.
"use strict";

const PRECISION_BITS = 32 - 8 - 2; // Pillow's 8-bit resampler (libImaging/Resample.c)

function bilinear(x) {
  x = Math.abs(x);
  return x < 1 ? 1 - x : 0;
}

// Pillow's precompute_coeffs + normalize_coeffs_8bpc for one axis: bounds and integer weights
// (fixedPoint false: the normalised floating-point weights Pillow uses for "F" images, the heatmap).
function coefficients(inSize, outSize, fixedPoint = true) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = 1 * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const weights = new Float64Array(outSize * ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1 / filterscale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let total = 0;
    const k = new Float64Array(xmax);
    for (let x = 0; x < xmax; x++) {
      k[x] = bilinear((x + xmin - center + 0.5) * ss);
      total += k[x];
    }
    for (let x = 0; x < xmax; x++) {
      const w = total !== 0 ? k[x] / total : k[x];
      weights[xx * ksize + x] = !fixedPoint ? w : w < 0 ? Math.trunc(-0.5 + w * (1 << PRECISION_BITS))
                                      : Math.trunc(0.5 + w * (1 << PRECISION_BITS));
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { bounds, weights, ksize };
}

function clip8(value) {
  const v = Math.floor(value / (1 << PRECISION_BITS));
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

// One resampling pass along x (horizontal) or y (vertical) of an image of `channels` values per pixel:
// uint8 with Pillow's fixed-point weights (the pixels), or floating point as Pillow resizes "F" images (a map).
function resamplePass(src, width, height, outSize, horizontal, channels, fixedPoint) {
  const { bounds, weights, ksize } = coefficients(horizontal ? width : height, outSize, fixedPoint);
  const outW = horizontal ? outSize : width;
  const outH = horizontal ? height : outSize;
  const out = fixedPoint ? new Uint8Array(outW * outH * channels) : new Float32Array(outW * outH * channels);
  const sums = new Float64Array(channels);
  for (let y = 0; y < outH; y++) {
    for (let x = 0; x < outW; x++) {
      const i = horizontal ? x : y;
      const start = bounds[i * 2], count = bounds[i * 2 + 1];
      sums.fill(fixedPoint ? 1 << (PRECISION_BITS - 1) : 0);
      for (let t = 0; t < count; t++) {
        const w = weights[i * ksize + t];
        const p = (horizontal ? y * width + start + t : (start + t) * width + x) * channels;
        for (let c = 0; c < channels; c++) sums[c] += src[p + c] * w;
      }
      const o = (y * outW + x) * channels;
      for (let c = 0; c < channels; c++) out[o + c] = fixedPoint ? clip8(sums[c]) : sums[c];
    }
  }
  return out;
}

// Pillow's Image.resize(size, BILINEAR): a horizontal pass, then a vertical one, each only if needed.
// RGB pixels by default; `channels` 1 and `fixedPoint` false for a float map (toolkit.runtime.heatmap.to_image).
function resizeBilinear(data, width, height, outW, outH, channels = 3, fixedPoint = true) {
  let w = width, h = height;
  if (outW !== w) { data = resamplePass(data, w, h, outW, true, channels, fixedPoint); w = outW; }
  if (outH !== h) { data = resamplePass(data, w, h, outH, false, channels, fixedPoint); h = outH; }
  return data;
}

// Each value over the map's peak (0..1); a map with no positive evidence stays zero (toolkit.runtime.heatmap).
function normalized(map) {
  let top = 0;
  for (const v of map) if (v > top) top = v;
  return Float32Array.from(map, (v) => (top > 0 ? Math.max(v, 0) / top : 0));
}

// The peak as (x, y) fractions of the side: the centre of the plateau at the maximum, as peak_of does.
function peakOf(map, width, height) {
  let top = -Infinity;
  for (const v of map) if (v > top) top = v;
  const tolerance = 1e-6 * Math.max(top, 1e-30);
  let sx = 0, sy = 0, n = 0;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (map[y * width + x] >= top - tolerance) { sx += x; sy += y; n++; }
    }
  }
  return [(sx / n + 0.5) / width, (sy / n + 0.5) / height];
}

// A heatmap bundle's Grad-CAM of the reported class: the model's second output, one map per label on the
// base's grid (N x h x w x labels), scaled to its peak and resized to the input as toolkit.runtime does.
function heatmapOf(outputs, config, index) {
  const record = config.toolkit_facts && config.toolkit_facts.extra && config.toolkit_facts.extra.heatmap;
  if (!record) return null;
  const tensor = outputs[record.output];
  const [, h, w, k] = tensor.dims;
  const grid = new Float32Array(h * w);
  for (let i = 0; i < h * w; i++) grid[i] = tensor.data[i * k + index];
  const size = config.image_size;
  const map = normalized(resizeBilinear(grid, w, h, size, size, 1, false));
  return { grid: Array.from(normalized(grid)), width: w, height: h, map, peak: peakOf(map, size, size) };
}

// Jet-like colours for 0..1 (blue, cyan, yellow, red), as the overlays toolkit explain writes.
function jet(v) {
  const channel = (offset) => Math.round(255 * Math.min(Math.max(1.5 - Math.abs(4 * v - offset), 0), 1));
  return [channel(3), channel(2), channel(1)];
}

// The model's input pixels with the map over them, half transparent, and a cross at the peak.
function drawOverlay(canvas, result, size) {
  canvas.width = size;
  canvas.height = size;
  const context = canvas.getContext("2d");
  const image = context.createImageData(size, size);
  for (let i = 0; i < size * size; i++) {
    const [r, g, b] = jet(result.heatmap.map[i]);
    image.data[i * 4] = Math.round(0.55 * result.pixels[i * 3] + 0.45 * r);
    image.data[i * 4 + 1] = Math.round(0.55 * result.pixels[i * 3 + 1] + 0.45 * g);
    image.data[i * 4 + 2] = Math.round(0.55 * result.pixels[i * 3 + 2] + 0.45 * b);
    image.data[i * 4 + 3] = 255;
  }
  context.putImageData(image, 0, 0);
  const [px, py] = result.heatmap.peak;
  context.strokeStyle = "white";
  context.lineWidth = Math.max(1, size / 100);
  context.beginPath();
  context.moveTo(px * size - size / 20, py * size);
  context.lineTo(px * size + size / 20, py * size);
  context.moveTo(px * size, py * size - size / 20);
  context.lineTo(px * size, py * size + size / 20);
  context.stroke();
  canvas.hidden = false;
}

// RGBA from the canvas -> RGB, transparent regions over white (as toolkit.imaging does).
function toRgb(rgba) {
  const n = rgba.length / 4;
  const rgb = new Uint8Array(n * 3);
  for (let i = 0; i < n; i++) {
    const a = rgba[i * 4 + 3];
    for (let c = 0; c < 3; c++) {
      const v = rgba[i * 4 + c];
      rgb[i * 3 + c] = a === 255 ? v : Math.round((v * a + 255 * (255 - a)) / 255);
    }
  }
  return rgb;
}

async function decode(blob) {
  const bitmap = await createImageBitmap(blob, {
    imageOrientation: "from-image", colorSpaceConversion: "none", premultiplyAlpha: "none",
  });
  const canvas = document.createElement("canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0);
  const { data } = context.getImageData(0, 0, bitmap.width, bitmap.height);
  return { rgb: toRgb(data), width: bitmap.width, height: bitmap.height };
}

// The model's input pixels (HxWx3 uint8) for an image file or blob.
async function preprocess(blob, size) {
  const { rgb, width, height } = await decode(blob);
  return resizeBilinear(rgb, width, height, size, size);
}

function decide(probs, config) {
  const d = config.decision;
  if (d && config.labels.length === 2) {
    const positive = config.labels.indexOf(d.positive_class);
    return probs[positive] >= d.threshold ? positive : 1 - positive;
  }
  let best = 0;
  for (let i = 1; i < probs.length; i++) if (probs[i] > probs[best]) best = i;
  return best;
}

async function classify(session, config, blob) {
  const pixels = await preprocess(blob, config.image_size);
  const input = new ort.Tensor("float32", Float32Array.from(pixels), [1, config.image_size, config.image_size, 3]);
  const outputs = await session.run({ [config.input_name]: input });
  const name = session.outputNames.includes(config.output_name) ? config.output_name : session.outputNames[0];
  const probs = Array.from(outputs[name].data);
  const index = decide(probs, config);
  return { label: config.labels[index], index, probabilities: probs, pixels, heatmap: heatmapOf(outputs, config, index) };
}

function show(result, config) {
  document.getElementById("result").textContent = result.label;
  const table = document.getElementById("scores");
  table.replaceChildren();
  config.labels.forEach((name, i) => {
    const row = table.insertRow();
    row.insertCell().textContent = name;
    row.insertCell().textContent = result.probabilities[i].toFixed(4);
  });
  if (result.heatmap) {
    drawOverlay(document.getElementById("overlay"), result, config.image_size);
    const [x, y] = result.heatmap.peak;
    document.getElementById("explanation").textContent =
      `Heatmap (Grad-CAM): the evidence for ${result.label} is strongest at ${Math.round(100 * x)}% across, ` +
      `${Math.round(100 * y)}% down the image.`;
  }
}

// What the numbers beside the labels are: people act on them, so the page says whether they are calibrated.
function calibrationNote(facts) {
  const calibration = facts && facts.score_calibration;
  if (calibration && calibration.method === "temperature") {
    return `Probabilities are calibrated (temperature ${calibration.temperature.toFixed(2)}, fitted on ` +
      "validation images): among images scored about 0.8, about 80% had that label there.";
  }
  if (calibration && calibration.method === "none") {
    return "Probabilities are not calibrated: a high score need not mean a likely label.";
  }
  return "Whether these probabilities are calibrated is not recorded for this model.";
}

async function main() {
  const config = await (await fetch("bundle.json")).json();
  document.getElementById("title").textContent = config.title;
  document.getElementById("calibration").textContent = calibrationNote(config.toolkit_facts);
  if (config.decision) {
    const d = config.decision;
    document.getElementById("decision").textContent =
      `Operating point: ${d.positive_class} when its probability is >= ${d.threshold}` +
      (d.criterion ? ` (${d.criterion}, chosen on validation).` : ".");
  }
  ort.env.wasm.wasmPaths = new URL("ort/", location.href).href;
  ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  const session = await ort.InferenceSession.create(config.model, { executionProviders: ["wasm"] });
  const file = document.getElementById("file");
  window.toolkit = { config, session, classify: (blob) => classify(session, config, blob), preprocess };
  file.disabled = false;
  document.getElementById("status").textContent = "Choose an image.";
  file.addEventListener("change", async () => {
    const chosen = file.files[0];
    if (!chosen) return;
    document.getElementById("preview").src = URL.createObjectURL(chosen);
    document.getElementById("status").textContent = "Classifying…";
    try {
      const result = await classify(session, config, chosen);
      window.toolkit.last = result;
      show(result, config);
      document.getElementById("status").textContent = "Done.";
    } catch (error) {
      document.getElementById("status").textContent = `Could not classify this image: ${error.message}`;
    }
  });
  document.body.dataset.ready = "true";
}

main().catch((error) => {
  document.getElementById("status").textContent = `Could not load the model: ${error.message}`;
  document.body.dataset.ready = "error";
});
