// facesearch's web page: plain JavaScript over the /v1 API (no build step, nothing from elsewhere).
"use strict";
const $ = (id) => document.getElementById(id);
const state = { key: sessionStorage.getItem("facesearch-key") || "" };

function say(text) { $("message").textContent = text || ""; }

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.key) headers["Authorization"] = "Bearer " + state.key;
  const r = await fetch(path, Object.assign({}, options, { headers }));
  if (r.status === 401) { $("key-form").hidden = false; }
  if (!r.ok) {
    let why = r.status + " " + r.statusText;
    try { why = (await r.json()).error || why; } catch (e) { /* not JSON */ }
    throw new Error(why);
  }
  const kind = r.headers.get("content-type") || "";
  return kind.includes("json") ? r.json() : r.blob();
}

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") e.className = v; else if (k.startsWith("data-")) e.setAttribute(k, v); else e[k] = v;
  }
  for (const c of children) e.append(c);
  return e;
}

// ---- tabs ----
function show(tab) {
  for (const s of ["search", "enroll", "identities"]) $(s).hidden = s !== tab;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.tab === tab);
  if (tab === "identities") loadIdentities().catch((e) => say(e.message));
}
window.addEventListener("hashchange", () => show(location.hash.slice(1) || "search"));

// ---- key ----
$("key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  state.key = $("key").value.trim();
  sessionStorage.setItem("facesearch-key", state.key);
  whoami();
});
async function whoami() {
  try {
    const w = await api("/v1/whoami");
    $("key-form").hidden = !!w.key || !w.auth;
    $("who").textContent = w.auth ? "key " + w.key + " (" + w.scope + ")" : "no key needed (loopback)";
    say("");
  } catch (e) { say(e.message); }
}

// ---- search ----
async function thumbnail(faceId) {
  const blob = await api("/v1/faces/" + faceId + "/image");
  return URL.createObjectURL(blob);
}

function drawBoxes(img, faces) {
  const c = $("probe-canvas");
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext("2d");
  g.drawImage(img, 0, 0);
  g.lineWidth = Math.max(2, img.naturalWidth / 300);
  g.font = Math.max(14, img.naturalWidth / 40) + "px sans-serif";
  faces.forEach((f, i) => {
    if (!f.face || !f.face.box) return;
    const [x, y, w, h] = f.face.box;
    g.strokeStyle = f.identity ? "#17803d" : "#ffb000";
    g.strokeRect(x, y, w, h);
    g.fillStyle = g.strokeStyle;
    g.fillText(String(i + 1), x + 4, y + Math.max(16, img.naturalWidth / 40));
  });
  c.hidden = false;
}

async function renderResults(entry, img) {
  const out = $("results");
  out.replaceChildren();
  if (entry.error) { say(entry.error); return; }
  const faces = entry.faces || [entry];
  if (img) drawBoxes(img, faces);
  if (!faces.length) { out.append(el("p", { textContent: "no face found" })); return; }
  for (const [i, f] of faces.entries()) {
    const verdict = f.identity
      ? el("span", { class: "ok", textContent: "match: " + f.identity })
      : el("span", { class: "no", textContent: "unknown" });
    const head = el("h3", {}, "face " + (i + 1) + ": ", verdict,
                    " (threshold " + f.threshold.toFixed(3) + ")");
    const list = el("ol", { class: "matches" });
    for (const m of f.matches) {
      const pic = el("img", { alt: m.identity, width: 112, height: 112 });
      thumbnail(m.face_id).then((u) => { pic.src = u; }).catch(() => {});
      list.append(el("li", { class: m.match ? "match" : "", "data-identity": m.identity }, pic,
                     el("div", { class: "who", textContent: m.identity }),
                     el("div", { class: "distance", textContent: "distance " + m.distance.toFixed(3) })));
    }
    out.append(el("div", { class: "face", "data-face": String(i + 1) }, head, list));
  }
}

async function search(file) {
  say("searching...");
  const form = new FormData();
  form.append("probe", file, file.name);
  const detect = $("probe-detect").checked;
  try {
    const [entry] = await api("/v1/query?top_k=5&detect=" + detect + "&detect_fallback=" + detect,
                              { method: "POST", body: form });
    const img = new Image();
    img.src = URL.createObjectURL(file);
    await img.decode().catch(() => {});
    say("");
    await renderResults(entry, img);
    document.body.dataset.searched = "1";
  } catch (e) { say(e.message); }
}
$("probe").addEventListener("change", () => { if ($("probe").files[0]) search($("probe").files[0]); });
const drop = $("drop");
drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (ev) => {
  ev.preventDefault(); drop.classList.remove("over");
  if (ev.dataTransfer.files[0]) search(ev.dataTransfer.files[0]);
});

// ---- enroll ----
$("enroll-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = new FormData();
  form.append("identity", $("enroll-identity").value.trim());
  for (const f of $("enroll-files").files) form.append("image", f, f.name);
  const detect = $("enroll-detect").checked;
  say("enrolling...");
  try {
    const r = await api("/v1/enroll?detect=" + detect, { method: "POST", body: form });
    say("");
    $("enroll-report").textContent = "added " + r.added + ", skipped " + r.skipped + ", failed " + r.failed
      + (r.failures.length ? "\n" + r.failures.map((f) => f.source + ": " + f.reason).join("\n") : "");
  } catch (e) { say(e.message); }
});

// ---- identities ----
async function loadIdentities() {
  const rows = await api("/v1/identities");
  const body = $("identity-rows");
  body.replaceChildren();
  for (const r of rows) {
    const rename = el("button", { type: "button", textContent: "rename" });
    rename.addEventListener("click", async () => {
      const to = prompt("New name for " + r.identity, r.identity);
      if (!to || to === r.identity) return;
      try {
        await api("/v1/identities/" + encodeURIComponent(r.identity),
                  { method: "PATCH", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ to }) });
        loadIdentities();
      } catch (e) { say(e.message); }
    });
    const remove = el("button", { type: "button", textContent: "remove" });
    remove.addEventListener("click", async () => {
      if (!confirm("Remove " + r.identity + " and its " + r.faces + " faces?")) return;
      try {
        await api("/v1/identities/" + encodeURIComponent(r.identity), { method: "DELETE" });
        loadIdentities();
      } catch (e) { say(e.message); }
    });
    body.append(el("tr", { "data-identity": r.identity }, el("td", { textContent: r.identity }),
                   el("td", { textContent: String(r.faces) }), el("td", {}, rename, remove)));
  }
}

whoami();
show(location.hash.slice(1) || "search");
