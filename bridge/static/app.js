// qabridge's page: plain JavaScript, no build step, talks only to the bridge that served it.
"use strict";

(function () {
  const KEY_STORE = "qabridge.apiKey"; // sessionStorage only: gone when the tab closes
  const $ = (id) => document.getElementById(id);
  const el = {
    form: $("ask-form"), context: $("context"), contextLabel: $("context-label"), question: $("question"),
    topK: $("top-k"), ask: $("ask"), file: $("file"), drop: $("drop"), docsPane: $("documents-pane"),
    docs: $("documents"), docCount: $("doc-count"), error: $("error"), status: $("status"), model: $("model"),
    key: $("api-key"), result: $("result"), bestAnswer: $("best-answer"), bestMeta: $("best-meta"),
    answers: $("answers"), source: $("source"), sourceTitle: $("source-title"), meta: $("meta"),
  };

  const state = { documents: [], last: null, selected: 0, busy: false };

  // ---- API ------------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    const key = el.key.value.trim();
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }

  async function api(path, options) {
    let resp;
    try {
      resp = await fetch(path, options);
    } catch (err) {
      throw new ApiError(0, "network_error", "The bridge cannot be reached (" + err.message + ").");
    }
    let body = null;
    const type = resp.headers.get("content-type") || "";
    if (type.includes("application/json")) {
      try {
        body = await resp.json();
      } catch (err) {
        body = null;
      }
    }
    if (!resp.ok) {
      const e = body && body.error;
      if (e && e.message) throw new ApiError(resp.status, e.code || "error", e.message);
      throw new ApiError(resp.status, "http_" + resp.status, "The bridge answered HTTP " + resp.status + ".");
    }
    if (body === null) throw new ApiError(resp.status, "invalid_response", "The bridge sent no JSON.");
    return body;
  }

  // ---- messages -------------------------------------------------------------------------------
  function showError(err, what) {
    const code = err.code ? " [" + err.code + (err.status ? ", HTTP " + err.status : "") + "]" : "";
    el.error.replaceChildren();
    const strong = document.createElement("strong");
    strong.textContent = (what ? what + ": " : "");
    const msg = document.createElement("span");
    msg.className = "error-message";
    msg.textContent = err.message;
    const small = document.createElement("span");
    small.className = "error-code";
    small.textContent = code;
    el.error.append(strong, msg, small);
    el.error.dataset.code = err.code || "";
    el.error.hidden = false;
  }

  function clearError() {
    el.error.hidden = true;
    el.error.replaceChildren();
    delete el.error.dataset.code;
  }

  function setStatus(text) {
    el.status.textContent = text;
  }

  // ---- offsets: the API counts code points (Python str), JavaScript counts UTF-16 units -------
  function unitIndex(text, cp) {
    if (!/[\uD800-\uDFFF]/.test(text)) return cp;
    let units = 0;
    let n = 0;
    for (const ch of text) {
      if (n === cp) return units;
      units += ch.length;
      n += 1;
    }
    return units;
  }

  function cpSlice(text, start, end) {
    return text.slice(unitIndex(text, start), unitIndex(text, end));
  }

  // ---- models and health ----------------------------------------------------------------------
  let healthTimer = null;

  async function refresh() {
    clearTimeout(healthTimer);
    try {
      const h = await api("api/health", { headers: headers() });
      if (!h.ready) {
        setStatus(h.status === "error" ? "The model could not be loaded: " + (h.error || "unknown error")
          : "The model is loading…");
        if (h.status !== "error") healthTimer = setTimeout(refresh, 1500);
        return;
      }
      setStatus("Ready" + (h.status === "degraded" ? " (degraded: see /api/health)" : "") + ".");
    } catch (err) {
      setStatus("Health check failed: " + err.message);
      healthTimer = setTimeout(refresh, 3000);
      return;
    }
    await loadModels();
  }

  async function loadModels() {
    const previous = el.model.value;
    try {
      const data = await api("api/models", { headers: headers() });
      el.model.replaceChildren();
      for (const m of data.models || []) {
        const opt = document.createElement("option");
        opt.value = m.name;
        const detail = [m.engine, m.quantization, m.source === "ollama" ? "Ollama" : ""].filter(Boolean).join(", ");
        opt.textContent = m.name + (m.name === data.default ? " (default)" : "") + (detail ? " · " + detail : "");
        if (m.name === (previous || data.default)) opt.selected = true;
        el.model.append(opt);
      }
      if (!el.model.options.length) el.model.append(new Option("(no model)", ""));
    } catch (err) {
      el.model.replaceChildren(new Option("(unavailable)", ""));
      if (err.status === 401) setStatus("This bridge needs an API key: enter it above.");
      else setStatus("Models could not be listed: " + err.message);
    }
  }

  // ---- documents ------------------------------------------------------------------------------
  function mode() {
    return el.form.querySelector("input[name=mode]:checked").value;
  }

  function setMode(m) {
    el.form.querySelector("input[name=mode][value=" + m + "]").checked = true;
    applyMode();
  }

  function applyMode() {
    const docs = mode() === "documents";
    el.docsPane.hidden = !docs;
    el.contextLabel.textContent = docs ? "Pasted text (read as one more document, if any)" : "Context";
    el.context.rows = docs ? 5 : 12;
  }

  function renderDocuments() {
    el.docs.replaceChildren();
    state.documents.forEach((d, i) => {
      const li = document.createElement("li");
      const name = document.createElement("span");
      name.className = "doc-name";
      name.textContent = d.name;
      const info = document.createElement("span");
      info.className = "hint";
      info.textContent = " " + d.type + ", " + d.text.length.toLocaleString() + " characters" +
        (d.pages ? ", " + d.pages + " page" + (d.pages === 1 ? "" : "s") : "");
      const rm = document.createElement("button");
      rm.type = "button";
      rm.className = "link";
      rm.textContent = "Remove";
      rm.setAttribute("aria-label", "Remove " + d.name);
      rm.addEventListener("click", () => {
        state.documents.splice(i, 1);
        renderDocuments();
      });
      li.append(name, info, " ", rm);
      el.docs.append(li);
    });
    el.docCount.textContent = state.documents.length ? "(" + state.documents.length + ")" : "(none yet: add files)";
  }

  async function extract(file) {
    const form = new FormData();
    form.append("file", file, file.name);
    return api("api/extract", { method: "POST", headers: headers(), body: form });
  }

  async function addFiles(fileList) {
    const list = Array.from(fileList || []);
    if (!list.length) return;
    clearError();
    if (list.length > 1 && mode() === "context") setMode("documents");
    for (const file of list) {
      setStatus("Reading " + file.name + "…");
      try {
        const got = await extract(file);
        if (mode() === "context") {
          el.context.value = got.text;
        } else {
          state.documents.push({ name: got.filename, text: got.text, type: got.type, pages: got.pages });
          renderDocuments();
        }
        setStatus("Read " + got.filename + " (" + got.text.length.toLocaleString() + " characters).");
      } catch (err) {
        showError(err, file.name);
        setStatus("Could not read " + file.name + ".");
      }
    }
    el.file.value = "";
  }

  function documentsForRequest() {
    const docs = state.documents.map((d) => ({ name: d.name, text: d.text }));
    if (el.context.value.trim()) docs.push({ name: "pasted text", text: el.context.value });
    return docs;
  }

  // ---- asking ---------------------------------------------------------------------------------
  async function ask(event) {
    if (event) event.preventDefault();
    if (state.busy) return;
    clearError();
    const body = { question: el.question.value, top_k: Math.min(20, Math.max(1, parseInt(el.topK.value, 10) || 1)) };
    if (el.model.value) body.model = el.model.value;
    let sources;
    if (mode() === "documents") {
      sources = documentsForRequest();
      body.documents = sources.map((d) => d.text);
    } else {
      sources = [{ name: "context", text: el.context.value }];
      body.context = el.context.value;
    }
    state.busy = true;
    el.ask.disabled = true;
    el.form.setAttribute("aria-busy", "true");
    setStatus("Reading…");
    try {
      const data = await api("api/qa", {
        method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(body),
      });
      state.last = { data, sources, documents: mode() === "documents" };
      state.selected = 0;
      render();
      setStatus("Answered in " + totalMs(data).toFixed(0) + " ms.");
    } catch (err) {
      showError(err, "The question could not be answered");
      setStatus("Error.");
    } finally {
      state.busy = false;
      el.ask.disabled = false;
      el.form.removeAttribute("aria-busy");
    }
  }

  function totalMs(data) {
    return Object.values(data.timing_ms || {}).reduce((a, b) => a + (Number(b) || 0), 0);
  }

  function pct(score) {
    return (100 * Number(score || 0)).toFixed(1) + "%";
  }

  function sourceName(item) {
    const last = state.last;
    if (!last.documents || item.document === null || item.document === undefined) return "";
    const s = last.sources[item.document];
    return s ? s.name : "document " + item.document;
  }

  // ---- rendering the answer -------------------------------------------------------------------
  function render() {
    const { data } = state.last;
    const items = Array.isArray(data.answers) ? data.answers : [];
    // A future API may say the model abstains with `answer: null`; an empty list means the same.
    const abstains = data.answer === null || data.answer === undefined || (!items.length && !data.answer);
    el.result.hidden = false;
    el.result.classList.toggle("no-answer", abstains);
    if (abstains) {
      el.bestAnswer.textContent = "No answer";
      el.bestMeta.textContent = "The model found no answer to this question in the text" +
        (typeof data.score === "number" && data.score > 0 ? " (best span " + pct(data.score) + ")." : ".");
    } else {
      el.bestAnswer.textContent = data.answer;
      const from = sourceName(data);
      el.bestMeta.textContent = "score " + pct(data.score) + (from ? " · from " + from : "");
    }
    el.answers.replaceChildren();
    items.forEach((a, i) => {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button";
      b.className = "answer-item";
      b.dataset.index = String(i);
      const text = document.createElement("span");
      text.className = "answer-text";
      text.textContent = a.answer;
      const meta = document.createElement("span");
      meta.className = "answer-score";
      const from = sourceName(a);
      meta.textContent = pct(a.score) + (from ? " · " + from : "");
      b.append(text, meta);
      b.addEventListener("click", () => select(i));
      li.append(b);
      el.answers.append(li);
    });
    const engine = [data.model, data.engine].filter(Boolean).join(" on ");
    el.meta.textContent = engine + (data.windows ? " · " + data.windows + " window" + (data.windows === 1 ? "" : "s") : "") +
      (data.embedder ? " · ranked by " + data.embedder : "");
    if (abstains || !items.length) {
      el.source.replaceChildren();
      el.sourceTitle.hidden = true;
      el.source.hidden = true;
    } else {
      select(0);
    }
  }

  function passageFor(item) {
    const ranking = state.last.data.ranking || [];
    return ranking.find((p) => p.document === item.document && p.start <= item.start && item.end <= p.end) || null;
  }

  function select(i) {
    const { data, sources, documents } = state.last;
    const item = data.answers[i];
    if (!item) return;
    state.selected = i;
    for (const b of el.answers.querySelectorAll(".answer-item")) {
      b.setAttribute("aria-pressed", b.dataset.index === String(i) ? "true" : "false");
    }
    const src = documents ? sources[item.document] : sources[0];
    if (!src) return;
    el.sourceTitle.hidden = false;
    el.source.hidden = false;
    // In documents mode show the passage the answer was read from; else the whole context.
    let from = 0;
    let to = null;
    let title = "Where it stands in the context";
    if (documents) {
      const p = passageFor(item);
      const n = Array.from(src.text).length;
      from = p ? p.start : Math.max(0, item.start - 300);
      to = p ? p.end : Math.min(n, item.end + 300);
      title = "Where it stands: " + src.name + (p ? ", passage at characters " + p.start + "–" + p.end : "");
    }
    const text = src.text;
    const end = to === null ? Array.from(text).length : to;
    const before = document.createElement("span");
    before.className = "before";
    before.textContent = (from > 0 ? "… " : "") + cpSlice(text, from, item.start);
    const mark = document.createElement("mark");
    mark.textContent = cpSlice(text, item.start, item.end);
    mark.dataset.start = String(item.start);
    mark.dataset.end = String(item.end);
    if (documents) mark.dataset.document = String(item.document);
    mark.title = "score " + pct(item.score);
    const after = document.createElement("span");
    after.className = "after";
    after.textContent = cpSlice(text, item.end, end) + (end < Array.from(text).length ? " …" : "");
    el.source.replaceChildren(before, mark, after);
    el.source.dataset.offset = String(from);
    el.sourceTitle.textContent = title;
    // Scroll the text box only (not the page) so the mark sits near its top third.
    el.source.scrollTop = Math.max(0, mark.offsetTop - el.source.clientHeight / 3);
  }

  // ---- wiring ---------------------------------------------------------------------------------
  function init() {
    el.key.value = sessionStorage.getItem(KEY_STORE) || "";
    // Enter in the key field stores it (a change event) instead of reloading the page.
    $("settings").addEventListener("submit", (e) => {
      e.preventDefault();
      el.key.dispatchEvent(new Event("change"));
    });
    el.key.addEventListener("change", () => {
      const v = el.key.value.trim();
      if (v) sessionStorage.setItem(KEY_STORE, v);
      else sessionStorage.removeItem(KEY_STORE);
      refresh();
    });
    for (const r of el.form.querySelectorAll("input[name=mode]")) r.addEventListener("change", applyMode);
    el.form.addEventListener("submit", ask);
    el.context.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) ask(e);
    });
    el.file.addEventListener("change", () => addFiles(el.file.files));
    for (const type of ["dragenter", "dragover"]) {
      el.drop.addEventListener(type, (e) => {
        e.preventDefault();
        el.drop.classList.add("over");
      });
    }
    for (const type of ["dragleave", "drop"]) {
      el.drop.addEventListener(type, () => el.drop.classList.remove("over"));
    }
    el.drop.addEventListener("drop", (e) => {
      e.preventDefault();
      addFiles(e.dataTransfer && e.dataTransfer.files);
    });
    applyMode();
    renderDocuments();
    refresh();
  }

  // Whatever goes wrong in here, say so on the page instead of leaving it blank or stuck.
  window.addEventListener("error", (e) => showError(new ApiError(0, "page_error", String(e.message)), "Page error"));
  window.addEventListener("unhandledrejection", (e) =>
    showError(new ApiError(0, "page_error", String(e.reason && e.reason.message || e.reason)), "Page error"));

  init();
})();
