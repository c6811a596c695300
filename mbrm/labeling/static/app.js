// mbrm labelling page: one query at a time, clips in sync, model assistance, keyboard.
"use strict";

const token = new URLSearchParams(location.search).get("token");
const $ = (id) => document.getElementById(id);

const state = {
  status: null,
  query: null,
  clips: [],         // per segment: {seg, frames: [ImageBitmap], canvas, ...}
  frame: 0,          // shared clock: every clip shows this frame (clamped to its length)
  playing: true,
  speed: 1,
  marks: {},         // side -> first unacceptable frame (preference queries)
  busy: false,
  lastTick: 0,
  acc: 0,
};

// ---------------------------------------------------------------- requests

async function api(method, path, body) {
  const headers = {};
  if (token) headers["X-Mbrm-Token"] = token;
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  let data;
  try { data = await r.json(); } catch (e) { data = { error: `HTTP ${r.status}` }; }
  if (!r.ok) {
    const err = new Error(data.error || `HTTP ${r.status}`);
    err.status = r.status;
    throw err;
  }
  return data;
}

function annotator() {
  return $("annotator").value.trim() || (state.status && state.status.default_annotator);
}

function say(text, kind) {
  const m = $("message");
  m.textContent = text || "";
  m.className = "message" + (kind ? " " + kind : "");
}

// ---------------------------------------------------------------- clips

async function fetchBlob(url) {
  const headers = token ? { "X-Mbrm-Token": token } : {};
  const r = await fetch(url, { headers });
  if (!r.ok) {
    let msg = `HTTP ${r.status}`;
    try { msg = (await r.json()).error || msg; } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  return r.blob();
}

function once(target, name) {
  return new Promise((resolve, reject) => {
    const ok = () => { cleanup(); resolve(); };
    const bad = () => { cleanup(); reject(new Error(`cannot decode this clip (${name})`)); };
    const cleanup = () => { target.removeEventListener(name, ok); target.removeEventListener("error", bad); };
    target.addEventListener(name, ok);
    target.addEventListener("error", bad);
  });
}

// Every frame decoded up front into bitmaps, so both clips step on one clock and a
// frame index is exact (needed for "unacceptable from this frame").
async function decodeFrames(clip, blob) {
  const n = clip.n_frames;
  if (clip.format === "mp4") {
    const video = document.createElement("video");
    video.muted = true;
    video.preload = "auto";
    const loaded = once(video, "loadeddata");
    video.src = URL.createObjectURL(blob);
    await loaded;
    const frames = [];
    for (let i = 0; i < n; i++) {
      const seeked = once(video, "seeked");
      video.currentTime = Math.min((i + 0.5) / clip.fps, Math.max(0, video.duration - 1e-3));
      await seeked;
      frames.push(await createImageBitmap(video));
    }
    URL.revokeObjectURL(video.src);
    return frames;
  }
  if (!("ImageDecoder" in window)) return null;  // caller falls back to the animated image
  const decoder = new ImageDecoder({ data: await blob.arrayBuffer(), type: clip.media_type });
  await decoder.tracks.ready;
  const count = decoder.tracks.selectedTrack.frameCount;
  const frames = [];
  for (let i = 0; i < Math.min(n, count); i++) {
    const { image } = await decoder.decode({ frameIndex: i });
    frames.push(await createImageBitmap(image));
    image.close();
  }
  decoder.close();
  return frames;
}

async function loadClip(c) {
  const blob = await fetchBlob(c.seg.clip.url);
  let frames = null;
  try {
    frames = await decodeFrames(c.seg.clip, blob);
  } catch (e) {
    frames = null;
    c.note = e.message;
  }
  if (frames && frames.length) {
    c.frames = frames;
    c.loading.remove();
  } else {
    // No frame-accurate decoder here: show the animation as it is (not in sync).
    const img = document.createElement("img");
    img.src = URL.createObjectURL(blob);
    img.width = c.seg.clip.width;
    img.height = c.seg.clip.height;
    c.canvas.replaceWith(img);
    c.loading.textContent = "this browser cannot step through frames; clip plays unsynchronised";
  }
}

// ---------------------------------------------------------------- drawing

function drawClip(c) {
  if (!c.frames) return;
  const i = Math.min(state.frame, c.frames.length - 1);
  const ctx = c.canvas.getContext("2d");
  ctx.drawImage(c.frames[i], 0, 0, c.canvas.width, c.canvas.height);
  if (c.seg.imagined) {
    ctx.fillStyle = "rgba(217,119,6,0.9)";
    ctx.fillRect(0, 0, 92, 20);
    ctx.fillStyle = "#fff";
    ctx.font = "bold 12px system-ui, sans-serif";
    ctx.fillText(c.seg.source.toUpperCase(), 6, 14);
  }
  const mark = markFor(c);
  if (mark !== undefined && mark !== null && i >= mark) {
    ctx.strokeStyle = "rgba(214,47,47,0.95)";
    ctx.lineWidth = 6;
    ctx.strokeRect(3, 3, c.canvas.width - 6, c.canvas.height - 6);
  }
  const risky = c.assist && c.assist.available && c.assist.risky.includes(i);
  c.riskyBadge.classList.toggle("on", !!risky);
}

function markFor(c) {
  return state.marks[c.seg.side];
}

function yRange() {
  // One reward scale for every clip of the query, so the plots compare directly.
  let lo = Infinity, hi = -Infinity;
  for (const c of state.clips) {
    const a = c.assist;
    if (!a || !a.available || !a.reward_mean) continue;
    a.reward_mean.forEach((m, t) => {
      if (m === null) return;
      const s = a.reward_std[t] || 0;
      lo = Math.min(lo, m - s);
      hi = Math.max(hi, m + s);
    });
  }
  if (!isFinite(lo)) return [-1, 1];
  if (hi - lo < 1e-6) { lo -= 1; hi += 1; }
  const pad = 0.05 * (hi - lo);
  return [lo - pad, hi + pad];
}

function drawAssist(c) {
  const a = c.assist;
  const cv = c.plot;
  const ctx = cv.getContext("2d");
  const W = cv.width, H = cv.height;
  ctx.clearRect(0, 0, W, H);
  if (!a || !a.available) return;
  const n = c.seg.n_states;
  const x = (i) => 4 + (W - 8) * (n > 1 ? i / (n - 1) : 0.5);
  const top = 4, rH = 62, pTop = rH + 12, pH = H - pTop - 4;
  // risky frames: red columns over both strips
  ctx.fillStyle = "rgba(214,47,47,0.22)";
  const half = (W - 8) / Math.max(1, n - 1) / 2;
  for (const i of a.risky) ctx.fillRect(x(i) - half, top, 2 * half, H - top - 2);
  if (a.reward_mean) {
    const [lo, hi] = yRange();
    const y = (v) => top + rH * (1 - (v - lo) / (hi - lo));
    if (lo < 0 && hi > 0) {
      ctx.strokeStyle = "#b8bec6"; ctx.setLineDash([3, 3]); ctx.lineWidth = 1;
      ctx.beginPath(); ctx.moveTo(4, y(0)); ctx.lineTo(W - 4, y(0)); ctx.stroke();
      ctx.setLineDash([]);
    }
    const T = a.reward_mean.length;
    // band: mean ± std (ensemble disagreement), reward r_t drawn at state t
    ctx.fillStyle = "rgba(47,111,214,0.20)";
    ctx.beginPath();
    for (let t = 0; t < T; t++) ctx.lineTo(x(t), y((a.reward_mean[t] ?? 0) + (a.reward_std[t] ?? 0)));
    for (let t = T - 1; t >= 0; t--) ctx.lineTo(x(t), y((a.reward_mean[t] ?? 0) - (a.reward_std[t] ?? 0)));
    ctx.closePath(); ctx.fill();
    ctx.strokeStyle = "#2f6fd6"; ctx.lineWidth = 2;
    ctx.beginPath();
    a.reward_mean.forEach((m, t) => { if (m !== null) ctx.lineTo(x(t), y(m)); });
    ctx.stroke();
    ctx.fillStyle = "#66707c"; ctx.font = "10px system-ui, sans-serif";
    ctx.fillText("reward ± sd", 6, top + 10);
  }
  if (a.p_unacceptable) {
    ctx.strokeStyle = "#d7dbe0"; ctx.lineWidth = 1;
    ctx.strokeRect(4, pTop, W - 8, pH);
    const yp = (p) => pTop + pH * (1 - p);
    if (a.threshold !== null) {
      ctx.strokeStyle = "#d62f2f"; ctx.setLineDash([3, 3]);
      ctx.beginPath(); ctx.moveTo(4, yp(a.threshold)); ctx.lineTo(W - 4, yp(a.threshold)); ctx.stroke();
      ctx.setLineDash([]);
    }
    ctx.strokeStyle = "#8a1f1f"; ctx.lineWidth = 1.5;
    ctx.beginPath();
    a.p_unacceptable.forEach((p, i) => { if (p !== null) ctx.lineTo(x(i), yp(p)); });
    ctx.stroke();
    ctx.fillStyle = "#66707c"; ctx.font = "10px system-ui, sans-serif";
    ctx.fillText("p(unacceptable)", 6, pTop + 10);
  }
  // the shared cursor
  const i = Math.min(state.frame, n - 1);
  ctx.strokeStyle = "#1d232b"; ctx.lineWidth = 1;
  ctx.beginPath(); ctx.moveTo(x(i), top); ctx.lineTo(x(i), H - 2); ctx.stroke();
}

function render() {
  for (const c of state.clips) { drawClip(c); drawAssist(c); }
  const n = nFrames();
  $("scrub").max = String(Math.max(0, n - 1));
  $("scrub").value = String(state.frame);
  $("frame").textContent = n ? `frame ${state.frame} / ${n - 1}` : "frame –";
  $("play").textContent = state.playing ? "❚❚" : "▶";
}

function nFrames() {
  return state.clips.reduce((m, c) => Math.max(m, c.frames ? c.frames.length : 0), 0);
}

function tick(now) {
  const n = nFrames();
  if (state.playing && n > 0 && state.query) {
    const dt = state.lastTick ? (now - state.lastTick) / 1000 : 0;
    state.acc += dt * state.query.segments[0].clip.fps * state.speed;
    // Hold the last frame a moment before looping, so the end state can be seen.
    const limit = state.frame === n - 1 ? 6 : 1;
    if (state.acc >= limit) {
      state.acc = 0;
      state.frame = state.frame >= n - 1 ? 0 : state.frame + 1;
      render();
    }
  }
  state.lastTick = now;
  requestAnimationFrame(tick);
}

function seek(i) {
  const n = nFrames();
  if (!n) return;
  state.frame = Math.max(0, Math.min(n - 1, i));
  state.acc = 0;
  render();
}

// ---------------------------------------------------------------- query view

function sideKey(side) {
  return side === "left" ? "u" : side === "right" ? "⇧U" : "u";
}

function buildClip(seg) {
  const box = document.createElement("div");
  box.className = "clip" + (seg.imagined ? " imagined" : "");
  box.style.width = `${seg.clip.width + 24}px`;  // text wraps under the clip, not beside it
  box.dataset.side = seg.side;
  const title = document.createElement("div");
  title.className = "clip-title";
  const name = seg.side === "segment" ? "Clip" : seg.side === "left" ? "Left" : "Right";
  const kind = seg.imagined ? seg.source : "real";
  title.innerHTML = `<span>${name}</span><span class="badge ${kind}">${kind}</span>`;
  const screen = document.createElement("div");
  screen.className = "screen";
  const canvas = document.createElement("canvas");
  canvas.className = "video";
  canvas.width = seg.clip.width;
  canvas.height = seg.clip.height;
  const loading = document.createElement("div");
  loading.className = "loading";
  loading.textContent = "rendering…";
  const risky = document.createElement("span");
  risky.className = "badge risky";
  risky.textContent = "risky frame";
  screen.append(canvas, loading, risky);
  const mark = document.createElement("div");
  mark.className = "mark";
  const assist = document.createElement("div");
  assist.className = "assist";
  const plot = document.createElement("canvas");
  plot.width = seg.clip.width;
  plot.height = 110;
  const sum = document.createElement("div");
  sum.className = "sum";
  sum.textContent = "model assistance: loading…";
  assist.append(sum, plot);
  box.append(title, screen, mark, assist);
  return {
    seg, box, canvas, loading, plot, sum, mark, frames: null, assist: null,
    riskyBadge: risky,
  };
}

function describeAssist(c) {
  const a = c.assist;
  if (!a || !a.available) {
    c.sum.textContent = "no model assistance: " + ((a && a.note) || "unavailable");
    c.plot.style.display = "none";
    return;
  }
  const parts = [];
  if (a.reward_mean) {
    const ms = a.reward_mean.filter((m) => m !== null);
    const total = ms.reduce((s, m) => s + m, 0);
    const sd = a.reward_std.filter((s) => s !== null);
    const meanSd = sd.reduce((s, v) => s + v, 0) / Math.max(1, sd.length);
    parts.push(`predicted return ${total.toFixed(2)} (mean sd ${meanSd.toFixed(2)}/step)`);
  }
  if (a.threshold !== null && a.p_unacceptable) {
    parts.push(a.risky.length ? `${a.risky.length} risky frame(s), from ${a.risky[0]}` : "no risky frame");
  } else if (a.note) {
    parts.push(a.note);
  }
  c.sum.textContent = parts.join(" · ");
}

function updateMarks() {
  for (const c of state.clips) {
    const m = markFor(c);
    c.mark.textContent = m === undefined ? "" : `marked unacceptable from frame ${m}  (x clears)`;
  }
}

function showEmpty(text) {
  state.query = null;
  state.clips = [];
  $("clips").innerHTML = "";
  const div = document.createElement("div");
  div.className = "empty";
  div.textContent = text;
  $("clips").append(div);
  $("query-head").textContent = "";
  $("answers").innerHTML = "";
  document.body.dataset.state = "empty";
  render();
}

function answerButtons(q) {
  const box = $("answers");
  box.innerHTML = "";
  const add = (key, label, fn, cls) => {
    const b = document.createElement("button");
    b.type = "button";
    b.innerHTML = `<kbd>${key}</kbd>${label}`;
    if (cls) b.className = cls;
    b.addEventListener("click", fn);
    box.append(b);
  };
  if (q.kind === "preference") {
    add("1 / ←", "Left is better", () => submitPreference("left"), "primary");
    add("2 / →", "Right is better", () => submitPreference("right"), "primary");
    add("3 / =", "Equally good", () => submitPreference("equal"));
    add("4 / ?", "Cannot tell", () => submitPreference("cannot_tell"));
    add("u", "Left unacceptable from this frame", () => markSide("left"), "danger");
    add("⇧U", "Right unacceptable from this frame", () => markSide("right"), "danger");
    $("keys").textContent =
      "Keys: 1/← left better · 2/→ right better · 3/= equal · 4/? cannot tell · " +
      "u / shift+U: left / right clip unacceptable from the current frame (sent with your answer; x clears) · " +
      "space play/pause · , . step a frame · Home/End first/last frame · s skip";
  } else {
    add("u", "Unacceptable from this frame", () => submitUnacceptable(state.frame), "danger");
    add("1 / n", "Nothing unacceptable", () => submitUnacceptable(null), "primary");
    add("4 / ?", "Cannot tell", () => submitUnacceptable("cannot_tell"));
    $("keys").textContent =
      "Keys: u unacceptable from the current frame · 1/n nothing unacceptable · 4/? cannot tell · " +
      "space play/pause · , . step a frame · Home/End first/last frame · s skip";
  }
}

async function showQuery(q) {
  state.query = q;
  state.marks = {};
  state.frame = 0;
  state.acc = 0;
  state.playing = true;
  const kinds = { preference: "Which is better?", unacceptable: "Is any state unacceptable?" };
  $("query-head").innerHTML = "";
  const k = document.createElement("span");
  k.className = "kind";
  k.textContent = `Query ${q.id}: ${kinds[q.kind]}`;
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = [q.kind, q.source && `source ${q.source}`, q.acquisition && `chosen by ${q.acquisition}`,
    q.loop_round !== null && `round ${q.loop_round}`].filter(Boolean).join(" · ");
  $("query-head").append(k, meta);
  $("clips").innerHTML = "";
  state.clips = q.segments.map(buildClip);
  for (const c of state.clips) $("clips").append(c.box);
  answerButtons(q);
  updateMarks();
  document.body.dataset.state = "loading";
  render();
  const assists = state.clips.map(async (c) => {
    try { c.assist = await api("GET", c.seg.assist_url); }
    catch (e) { c.assist = { available: false, note: e.message }; }
    describeAssist(c);
  });
  const clips = state.clips.map((c) => loadClip(c).catch((e) => {
    c.loading.textContent = "clip failed: " + e.message;
  }));
  await Promise.all([...assists, ...clips]);
  if (state.query !== q) return;  // another query was shown meanwhile
  document.body.dataset.state = "ready";
  document.body.dataset.query = String(q.id);
  render();
}

function showProgress(p) {
  $("progress").innerHTML =
    `labelled <b id="n-labelled">${p.labelled}</b> · pending <b id="n-pending">${p.pending}</b>` +
    (p.skipped ? ` · skipped ${p.skipped}` : "") +
    (p.yours !== undefined ? ` · yours ${p.yours}` : "");
}

async function next() {
  try {
    const r = await api("POST", "/api/lease", { annotator: annotator() });
    showProgress(r.progress);
    if (r.query === null) {
      showEmpty(r.progress.pending
        ? "Every pending query is being labelled by someone else right now. Try again in a moment."
        : "No pending queries. The training loop adds more as it runs; reload later.");
      return;
    }
    await showQuery(r.query);
  } catch (e) {
    say(e.message, "error");
  }
}

// ---------------------------------------------------------------- answers

async function send(path, body, done) {
  if (state.busy || !state.query) return;
  state.busy = true;
  document.querySelectorAll(".answers button").forEach((b) => (b.disabled = true));
  try {
    const r = await api("POST", path, body);
    showProgress(r.progress);
    say(done, "ok");
    await next();
  } catch (e) {
    say(e.message, "error");
    // A conflict means the query is gone (answered or taken): move on.
    if (e.status === 409) await next();
  } finally {
    state.busy = false;
    document.querySelectorAll(".answers button").forEach((b) => (b.disabled = false));
  }
}

function submitPreference(value) {
  const q = state.query;
  if (!q || q.kind !== "preference") return;
  const body = { query_id: q.id, annotator: annotator(), value };
  if (Object.keys(state.marks).length) body.unacceptable = { ...state.marks };
  send("/api/label", body, `query ${q.id}: ${value.replace("_", " ")} recorded`);
}

// step: the first unacceptable frame, null for none, or "cannot_tell" (recorded as an
// answer that judges no state, not as "nothing unacceptable").
function submitUnacceptable(step) {
  const q = state.query;
  if (!q || q.kind !== "unacceptable") return;
  const n = state.clips[0].seg.n_states;
  const value = typeof step === "number" ? Math.min(step, n - 1) : step;
  const done = step === null ? "nothing unacceptable" : step === "cannot_tell" ? "cannot tell"
    : `unacceptable from frame ${value}`;
  send("/api/label", { query_id: q.id, annotator: annotator(), value }, `query ${q.id}: ${done} recorded`);
}

function submitSkip() {
  const q = state.query;
  if (!q) return;
  send("/api/skip", { query_id: q.id, annotator: annotator() }, `query ${q.id} skipped`);
}

function markSide(side) {
  const q = state.query;
  if (!q || q.kind !== "preference") return;
  const c = state.clips.find((c) => c.seg.side === side);
  state.marks[side] = Math.min(state.frame, c.seg.n_states - 1);
  state.playing = false;
  updateMarks();
  render();
}

// ---------------------------------------------------------------- keyboard

function onKey(e) {
  if (e.target instanceof HTMLInputElement || e.target instanceof HTMLSelectElement) return;
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const q = state.query;
  const k = e.key;
  let handled = true;
  if (k === " ") { state.playing = !state.playing; render(); }
  else if (k === ",") { state.playing = false; seek(state.frame - 1); }
  else if (k === ".") { state.playing = false; seek(state.frame + 1); }
  else if (k === "Home") { state.playing = false; seek(0); }
  else if (k === "End") { state.playing = false; seek(nFrames() - 1); }
  else if (!q || document.body.dataset.state !== "ready") handled = false;
  else if (q.kind === "preference") {
    if (k === "1" || k === "ArrowLeft") submitPreference("left");
    else if (k === "2" || k === "ArrowRight") submitPreference("right");
    else if (k === "3" || k === "=") submitPreference("equal");
    else if (k === "4" || k === "?") submitPreference("cannot_tell");
    else if (k === "u") markSide("left");
    else if (k === "U") markSide("right");
    else if (k === "x") { state.marks = {}; updateMarks(); render(); }
    else if (k === "s") submitSkip();
    else handled = false;
  } else {
    if (k === "u" || k === "U") submitUnacceptable(state.frame);
    else if (k === "1" || k === "n") submitUnacceptable(null);
    else if (k === "4" || k === "?") submitUnacceptable("cannot_tell");
    else if (k === "s") submitSkip();
    else handled = false;
  }
  if (handled) e.preventDefault();
}

// ---------------------------------------------------------------- start

async function start() {
  $("play").addEventListener("click", () => { state.playing = !state.playing; render(); });
  $("prev").addEventListener("click", () => { state.playing = false; seek(state.frame - 1); });
  $("next").addEventListener("click", () => { state.playing = false; seek(state.frame + 1); });
  $("scrub").addEventListener("input", (e) => { state.playing = false; seek(Number(e.target.value)); });
  $("speed").addEventListener("change", (e) => { state.speed = Number(e.target.value); });
  document.addEventListener("keydown", onKey);
  try {
    const saved = localStorage.getItem("mbrm.annotator");
    state.status = await api("GET", "/api/status" + (saved ? `?annotator=${encodeURIComponent(saved)}` : ""));
  } catch (e) {
    say(e.message, "error");
    return;
  }
  const s = state.status;
  $("annotator").value = s.annotator;
  $("task").textContent = s.task;
  $("hint").textContent = `${s.task_description}  Unacceptable: ${s.unacceptable_description}.` +
    (s.assistance.available ? "" : `  (No model assistance: ${s.assistance.note}.)`);
  showProgress(s.progress);
  $("annotator").addEventListener("change", async () => {
    const name = $("annotator").value.trim();
    if (!name) return;
    localStorage.setItem("mbrm.annotator", name);
    const old = state.query;
    if (old) {
      // The previous name's lease goes back to the queue; errors (expired) do not matter.
      await api("POST", "/api/release", { query_id: old.id, annotator: old.leased_to }).catch(() => {});
    }
    await next();
  });
  requestAnimationFrame(tick);
  await next();
}

start();
