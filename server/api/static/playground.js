// unmask playground: one streamed request at a time, drawn from its canvas frames
// (docs/playground.md). Plain browser JavaScript, no build step, nothing loaded from elsewhere.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const PRESETS = {
    quality: { threshold: 0.7, editing_threshold: 0.5, max_post_steps: 16 },
    speed: { threshold: 0.5, editing_threshold: 0.0, max_post_steps: 16 },
  };
  // a turbo-like ramp, step 1 first (neighbouring steps differ); later steps share the last
  const STEP_COLOURS = ["#30123b", "#4662d7", "#36aaf9", "#1ae4b6", "#72fe5e", "#c8ef34",
    "#faba39", "#f66b19", "#ca2a04", "#7a0403"];
  const STEP_INK = ["#fff", "#fff", "#000", "#000", "#000", "#000", "#000", "#000", "#fff",
    "#fff"];

  let modelId = null; // the served model name, once /v1/models answered
  let diffusion = null; // null: not known yet; false after the server refused include_canvas
  let run = null; // the run on screen (see newRun)

  // ---------------------------------------------------------------- the request

  function headers(key) {
    const h = { "Content-Type": "application/json" };
    if (key) h.Authorization = `Bearer ${key}`;
    return h;
  }

  function chatMode() {
    return document.querySelector("input[name=mode]:checked").value === "chat";
  }

  function decodingParams() {
    if ($("preset").value === "default") return {};
    const p = { threshold: Number($("threshold").value) };
    if ($("editing").checked) {
      p.editing_threshold = Number($("editing-threshold").value);
      p.max_post_steps = Number($("max-post-steps").value);
    } else {
      p.editing_threshold = "off"; // max_post_steps is refused when editing is off
    }
    return p;
  }

  // The body every server gets; `canvas` adds the diffusion parameters and the canvas stream.
  function requestBody(canvas) {
    const body = {};
    if (canvas && modelId) body.model = modelId;
    if (chatMode()) body.messages = [{ role: "user", content: $("prompt").value }];
    else body.prompt = $("prompt").value;
    body.max_tokens = Number($("max-tokens").value);
    body.temperature = Number($("temperature").value);
    if ($("ignore-eos").checked) body.ignore_eos = true;
    if (canvas) Object.assign(body, decodingParams());
    body.stream = true;
    body.stream_options = canvas ? { include_usage: true, include_canvas: true }
      : { include_usage: true };
    return body;
  }

  function endpoint(base) {
    // relative to the page when on this server, so a reverse proxy's path prefix is kept
    const path = `v1/${chatMode() ? "chat/completions" : "completions"}`;
    return base ? `${base}/${path}` : path;
  }

  // Server-sent events of a fetch response, one parsed `data:` object at a time.
  async function* events(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue; // comments (keep-alives) and other fields
          const data = line.slice(5).trim();
          if (data === "[DONE]") return;
          yield JSON.parse(data);
        }
      }
    }
  }

  async function errorOf(response) {
    try {
      const e = (await response.json()).error;
      return { message: e.message || response.statusText, param: e.param };
    } catch {
      return { message: `${response.status} ${response.statusText}`, param: null };
    }
  }

  // ---------------------------------------------------------------- a run and its view

  function newRun(body) {
    return {
      body, controller: new AbortController(),
      t0: performance.now(), tFirstText: null, tEnd: null,
      frames: [], // every canvas frame received
      queue: [], // events not shown yet (the pace option spaces frames out)
      streamDone: false, status: "running", error: null,
      text: "", usage: null, finishReason: null, model: null,
      view: newView(), // what the canvas shows: frames[0 .. view.shown) applied
      renders: [], // after each frame drawn: {frame, masked, committed, edited}
      compare: null,
    };
  }

  function newView() {
    return { blocks: new Map(), order: [], shown: 0, forwards: 0, promptLen: 0, last: null,
      generatedDone: 0 };
  }

  // One frame into the view's per-cell state (no drawing).
  function applyFrame(view, f) {
    let b = view.blocks.get(f.block_start);
    if (!b) {
      b = { start: f.block_start, steps: 0, done: false, el: null, generated: 0,
        cells: f.tokens.map(() => ({ token: null, text: null, conf: null, step: null,
          edits: 0 })) };
      view.blocks.set(f.block_start, b);
      view.order.push(b);
    }
    f.tokens.forEach((tok, o) => {
      const c = b.cells[o];
      c.token = tok;
      c.text = f.text[o];
      c.conf = f.confidence[o];
      c.prompt = f.block_start + o < f.prompt_len;
    });
    for (const o of f.committed) b.cells[o].step = f.step;
    for (const o of f.edited) b.cells[o].edits += 1;
    b.steps = f.step;
    b.generated = b.cells.filter((c) => c.token !== null && !c.prompt).length;
    if (f.block_done && !b.done) view.generatedDone += b.generated;
    b.done = f.block_done;
    view.forwards = f.forwards;
    view.promptLen = f.prompt_len;
    view.last = f;
    view.shown += 1;
    return b;
  }

  function shownText(text) {
    return text.replace(/\n/g, "↵").replace(/\t/g, "⇥").replace(/ /g, "·");
  }

  // [background, text colour] of a written cell
  function stepColour(step) {
    const i = Math.min(step, STEP_COLOURS.length) - 1;
    return [STEP_COLOURS[i], STEP_INK[i]];
  }

  function confColour(p) {
    const q = Math.max(0, Math.min(1, p));
    return [`hsl(${20 + 120 * q}, 62%, ${74 - 24 * q}%)`, "#000"];
  }

  function drawBlock(view, b, beyond) {
    if (!b.el) {
      b.el = document.createElement("div");
      b.el.className = "block";
      b.el.innerHTML = '<div class="label"></div><div class="cells"></div>';
      const cells = b.el.lastChild;
      for (let o = 0; o < b.cells.length; o++) cells.appendChild(document.createElement("div"));
      $("canvas").appendChild(b.el);
    }
    const byConf = $("colour").value === "confidence";
    const f = view.last;
    const fresh = f && f.block_start === b.start ? f : null;
    b.el.classList.toggle("active", !b.done);
    b.el.firstChild.textContent = `@${b.start}\n${b.steps} step${b.steps === 1 ? "" : "s"}`;
    const els = b.el.lastChild.children;
    b.cells.forEach((c, o) => {
      const el = els[o];
      const pos = b.start + o;
      let cls = "cell";
      el.style.background = "";
      el.style.color = "";
      if (c.token === null) {
        cls += " mask";
        el.textContent = "";
        el.title = `position ${pos}: masked`;
      } else if (c.prompt) {
        cls += " prompt";
        el.textContent = shownText(c.text ?? "");
        el.title = `position ${pos}: prompt ${JSON.stringify(c.text)}`;
      } else {
        const [bg, ink] = byConf && c.conf !== null ? confColour(c.conf)
          : stepColour(c.step ?? 1);
        el.style.background = bg;
        el.style.color = ink;
        cls += " gen";
        if (c.edits) cls += " edited";
        if (beyond !== null && pos >= beyond) cls += " beyond";
        el.textContent = shownText(c.text ?? "");
        el.title = `position ${pos}: ${JSON.stringify(c.text)} (id ${c.token}), step ` +
          `${c.step ?? "?"}` + (c.conf === null ? "" : `, confidence ${c.conf.toFixed(3)}`) +
          (c.edits ? `, edited ${c.edits}×` : "");
      }
      if (fresh && (fresh.committed.includes(o) || fresh.edited.includes(o))) cls += " fresh";
      el.className = cls;
    });
  }

  // Where the final output ends (cells after it were decoded with the block but cut), once known.
  function outputEnd(r) {
    return r.usage && r.status !== "running" ? r.view.promptLen + r.usage.completion_tokens
      : null;
  }

  function drawAll(r) {
    $("canvas").replaceChildren();
    const end = outputEnd(r);
    for (const b of r.view.order) {
      b.el = null;
      drawBlock(r.view, b, end);
    }
  }

  // After a frame is drawn: what the DOM shows now (the test reads these).
  function record(r, b) {
    const els = b.el.lastChild.children;
    let masked = 0, committed = 0, edited = 0;
    for (const el of els) {
      if (el.classList.contains("mask")) masked += 1;
      else if (el.classList.contains("gen")) committed += 1;
      if (el.classList.contains("edited")) edited += 1;
    }
    const done = r.view.generatedDone - (b.done ? b.generated : 0);
    r.renders.push({ frame: r.view.shown, masked, committed: done + committed, edited,
      forwards: r.view.forwards });
  }

  // ---------------------------------------------------------------- stats

  function fmt(x, digits) {
    return Number.isFinite(x) ? x.toFixed(digits) : "–";
  }

  function drawStats(r) {
    const v = r.view;
    const now = r.tEnd ?? performance.now();
    const generated = r.usage && r.status !== "running" ? r.usage.completion_tokens
      : v.generatedDone + (v.order.length && !v.order[v.order.length - 1].done
        ? v.order[v.order.length - 1].generated : 0);
    const last = r.frames[r.frames.length - 1];
    const forwards = diffusion === false ? (r.usage ? r.usage.completion_tokens : NaN)
      : r.status === "running" ? v.forwards : last ? last.forwards : NaN; // scrubbing aside
    $("stat-forwards").textContent = forwards || "–";
    $("stat-tpf").textContent = forwards ? fmt(generated / forwards, 2) : "–";
    $("stat-tps").textContent = r.tFirstText === null ? "–"
      : fmt((r.usage ? r.usage.completion_tokens : generated) / ((now - r.t0) / 1000), 1);
    $("stat-ttft").textContent = r.tFirstText === null ? "–"
      : `${fmt(r.tFirstText - r.t0, 0)} ms`;
    $("stat-blocks").textContent = v.order.length || "–";
    $("output-stats").textContent = r.status === "done" && forwards
      ? `(${forwards} forwards, ${fmt(generated / forwards, 2)} tokens per forward)` : "";
    $("status").textContent = r.status;
    $("output").textContent = r.text;
  }

  // ---------------------------------------------------------------- the player

  // Takes queued events in order: text and usage at once, a frame then a pause of `pace` ms.
  function play(r) {
    if (r !== run || r.playing) return;
    r.playing = true;
    const pace = Number($("pace").value);
    while (r.queue.length) {
      const ev = r.queue.shift();
      if (ev.text !== undefined) {
        r.text += ev.text;
      } else if (ev.frame !== undefined) {
        const b = applyFrame(r.view, ev.frame);
        drawBlock(r.view, b, null);
        record(r, b);
        if (pace > 0 && r.queue.length) {
          drawStats(r);
          setTimeout(() => { r.playing = false; play(r); }, pace);
          return;
        }
      }
    }
    r.playing = false;
    if (r.streamDone) finish(r);
    drawStats(r);
  }

  function finish(r) {
    if (r.status !== "running") return;
    r.tEnd = r.tEnd ?? performance.now();
    r.status = r.error ? "error" : r.controller.signal.aborted ? "stopped" : "done";
    if (r.error) {
      $("error").hidden = false;
      $("error").textContent = r.error;
    }
    drawAll(r);
    const s = $("scrubber");
    s.max = String(Math.max(1, r.frames.length));
    s.value = s.max;
    $("scrub").hidden = r.frames.length === 0;
    scrubLabel(r);
    $("run").disabled = false;
    $("stop").disabled = true;
    drawStats(r);
    document.body.dataset.status = r.status;
  }

  function scrubLabel(r) {
    const f = r.view.last;
    $("scrub-label").textContent = f ? `frame ${r.view.shown} of ${r.frames.length}: block ` +
      `@${f.block_start}, step ${f.step}, ${f.forwards} forwards` : "";
  }

  function scrubTo(r, k) {
    r.view = newView();
    for (const f of r.frames.slice(0, k)) applyFrame(r.view, f);
    drawAll(r);
    scrubLabel(r);
  }

  // ---------------------------------------------------------------- running

  async function stream(r, base, key, canvas) {
    const response = await fetch(endpoint(base), {
      method: "POST", headers: headers(key), body: JSON.stringify(r.body),
      signal: r.controller.signal,
    });
    if (!response.ok) return errorOf(response);
    for await (const chunk of events(response)) {
      if (chunk.error) {
        r.error = chunk.error.message;
        break;
      }
      r.model = chunk.model ?? r.model;
      if (chunk.usage) r.usage = chunk.usage;
      for (const c of chunk.choices ?? []) {
        const text = c.delta ? c.delta.content : c.text;
        if (text) {
          r.tFirstText = r.tFirstText ?? performance.now();
          r.queue.push({ text });
        }
        if (c.canvas && canvas) {
          r.frames.push(c.canvas);
          r.queue.push({ frame: c.canvas });
        }
        if (c.finish_reason) r.finishReason = c.finish_reason;
      }
      play(r);
    }
    return null;
  }

  async function start(ev) {
    ev.preventDefault();
    if (run && run.status === "running") return;
    const key = $("api-key").value.trim();
    sessionStorage.setItem("unmask.apiKey", key);
    const r = (run = newRun(requestBody(diffusion !== false)));
    $("canvas").replaceChildren();
    $("error").hidden = true;
    $("scrub").hidden = true;
    $("run").disabled = true;
    $("stop").disabled = false;
    document.body.dataset.status = "running";
    $("request").textContent = JSON.stringify(r.body, null, 2);
    drawStats(r);
    const twin = $("compare-url").value.trim().replace(/\/+$/, "");
    $("compare").hidden = !twin;
    $("outputs").classList.toggle("compare", Boolean(twin));
    if (twin) r.compare = compare(r, twin, $("compare-key").value.trim());
    try {
      let refused = await stream(r, "", key, diffusion !== false);
      if (refused && refused.param === "stream_options.include_canvas") {
        setDiffusion(false); // an autoregressive checkpoint: text only
        r.body = requestBody(false);
        $("request").textContent = JSON.stringify(r.body, null, 2);
        refused = await stream(r, "", key, false);
      }
      if (refused) r.error = refused.message;
      else if (r.frames.length) setDiffusion(true);
    } catch (e) {
      if (!r.controller.signal.aborted) r.error = String(e);
    }
    if (r.model) showModel(r.model);
    r.tEnd = performance.now(); // the pace option may still be drawing: not part of the run
    r.streamDone = true;
    if (r.compare) await r.compare;
    play(r);
  }

  // The same prompt against another server (the AR twin): its text and its forwards.
  async function compare(r, base, key) {
    const c = { text: "", usage: null, t0: performance.now(), tFirst: null, tEnd: null,
      error: null };
    $("compare").hidden = false;
    $("outputs").classList.add("compare");
    $("compare-output").textContent = "";
    $("compare-stats").textContent = `(${base})`;
    const body = requestBody(false);
    delete body.model;
    try {
      const response = await fetch(endpoint(base), {
        method: "POST", headers: headers(key), body: JSON.stringify(body),
        signal: r.controller.signal,
      });
      if (!response.ok) {
        c.error = (await errorOf(response)).message;
      } else {
        for await (const chunk of events(response)) {
          if (chunk.error) c.error = chunk.error.message;
          if (chunk.usage) c.usage = chunk.usage;
          for (const ch of chunk.choices ?? []) {
            const text = ch.delta ? ch.delta.content : ch.text;
            if (text) {
              c.tFirst = c.tFirst ?? performance.now();
              c.text += text;
              $("compare-output").textContent = c.text;
            }
          }
        }
      }
    } catch (e) {
      if (!r.controller.signal.aborted) {
        c.error = `${e} (is it running, with --cors-origins ${location.origin}?)`;
      }
    }
    c.tEnd = performance.now();
    const n = c.usage ? c.usage.completion_tokens : NaN;
    $("compare-stats").textContent = c.error ? `error: ${c.error}`
      : `${n} forwards (one per token), ${fmt(n / ((c.tEnd - c.t0) / 1000), 1)} tokens/s, ` +
        `first token ${fmt(c.tFirst - c.t0, 0)} ms`;
    r.compareResult = c;
    return c;
  }

  // ---------------------------------------------------------------- controls

  function setDiffusion(value) {
    diffusion = value;
    document.body.classList.toggle("autoregressive", value === false);
  }

  function showModel(name) {
    modelId = modelId ?? name;
    const kind = diffusion === false ? "autoregressive" : diffusion ? "block diffusion" : "";
    $("model-info").textContent = `model ${modelId}${kind ? ` (${kind})` : ""}`;
  }

  async function loadModels() {
    const key = $("api-key").value.trim();
    if (document.body.dataset.keyRequired === "true" && !key) {
      $("model-info").textContent = "this server needs an API key";
      return;
    }
    try {
      const response = await fetch("v1/models", { headers: headers(key) });
      if (!response.ok) {
        $("model-info").textContent = (await errorOf(response)).message;
        return;
      }
      modelId = null;
      showModel((await response.json()).data[0].id);
      document.body.dataset.ready = "true";
    } catch (e) {
      $("model-info").textContent = `cannot reach the server: ${e}`;
    }
  }

  function syncOutputs() {
    for (const id of ["threshold", "editing-threshold", "temperature"]) {
      $(`${id}-v`).textContent = Number($(id).value).toFixed(2);
    }
    const preset = $("preset").value;
    for (const id of ["threshold", "editing", "editing-threshold", "max-post-steps"]) {
      $(id).closest("label").classList.toggle("dim", preset === "default");
    }
    $("editing-threshold").disabled = !$("editing").checked;
    $("max-post-steps").disabled = !$("editing").checked;
  }

  function applyPreset() {
    const p = PRESETS[$("preset").value];
    if (p) {
      $("threshold").value = p.threshold;
      $("editing").checked = true;
      $("editing-threshold").value = p.editing_threshold;
      $("max-post-steps").value = p.max_post_steps;
    }
    syncOutputs();
  }

  function swatch(cls, colour) {
    const el = document.createElement("i");
    el.className = `swatch ${cls}`;
    if (colour) el.style.background = colour; // CSSOM, which the page's CSP allows
    return el;
  }

  function drawLegend() {
    const byConf = $("colour").value === "confidence";
    const ramp = document.createElement("span");
    ramp.className = "ramp";
    const colours = byConf ? [0, 0.25, 0.5, 0.75, 1].map((p) => confColour(p)[0]) : STEP_COLOURS;
    for (const c of colours) ramp.appendChild(swatch("", c));
    const items = [
      [swatch("cell mask"), "masked"], [swatch("cell prompt"), "prompt"],
      [ramp, byConf ? "confidence 0 … 1" : `step in block 1 … ${STEP_COLOURS.length}+`],
      [swatch("cell edited"), "edited"], [swatch("cell fresh"), "written this step"],
      [swatch("cell beyond", STEP_COLOURS[1]), "decoded past the output (cut)"],
    ];
    $("legend").replaceChildren(...items.map(([el, text]) => {
      const span = document.createElement("span");
      span.append(el, ` ${text}`);
      return span;
    }));
  }

  function init() {
    $("api-key").value = sessionStorage.getItem("unmask.apiKey") ?? "";
    $("form").addEventListener("submit", start);
    $("stop").addEventListener("click", () => run && run.controller.abort());
    $("api-key").addEventListener("change", loadModels);
    $("preset").addEventListener("change", applyPreset);
    for (const id of ["threshold", "editing", "editing-threshold", "max-post-steps"]) {
      $(id).addEventListener("input", () => {
        $("preset").value = "custom";
        syncOutputs();
      });
    }
    $("temperature").addEventListener("input", syncOutputs);
    $("colour").addEventListener("change", () => {
      drawLegend();
      if (run) drawAll(run);
    });
    $("scrubber").addEventListener("input", () => {
      if (run && run.status !== "running") scrubTo(run, Number($("scrubber").value));
    });
    syncOutputs();
    drawLegend();
    loadModels();
  }

  // What a test (or the console) can read about the run on screen.
  window.unmaskPlayground = {
    snapshot: () => run && {
      status: run.status, text: run.text, error: run.error, body: run.body,
      chat: "messages" in run.body, forwards: Number($("stat-forwards").textContent) || null,
      frames: run.frames.length, renders: run.renders, usage: run.usage,
      finishReason: run.finishReason, diffusion, model: modelId,
      compare: run.compareResult ?? null,
    },
  };

  init();
})();
