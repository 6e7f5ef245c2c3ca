// Live feed of a job page: history from the REST API, then the job's SSE stream (/v1/jobs/{id}/stream).
// EventSource reconnects by itself after a server restart and resumes with Last-Event-ID; on "end" it stops.
"use strict";

const LFLive = (() => {
  const MAX_SAMPLES = 500;  // the newest sampled completions the page holds
  const view = {job: {}, metrics: [], evals: [], rank1: [], events: [], samples: [], config: ""};
  let cursors = {metrics: "0-0", rank1: "0-0", events: "0-0", samples: "0-0"};
  let pending = null;

  function add(stream, data) {
    if (stream === "metrics") {
      if (typeof data.eval_accuracy === "number") view.evals.push({step: data.step, accuracy: data.eval_accuracy});
      if (typeof data.loss === "number") view.metrics.push(data);
    } else if (stream === "rank1") {
      view.rank1.push(data);
    } else if (stream === "events") {
      view.events.push(data);
    } else if (stream === "samples") {
      view.samples.push(data);
      if (view.samples.length > MAX_SAMPLES) view.samples.splice(0, view.samples.length - MAX_SAMPLES);
    }
  }

  function redraw() {
    if (pending) return;
    pending = setTimeout(() => { pending = null; LF.render(view); }, 300);
  }

  async function history(jobId, stream) {
    for (let guard = 0; guard < 200; guard++) {
      const res = await fetch(`/v1/jobs/${jobId}/${stream}?after=${cursors[stream]}&limit=1000`);
      if (!res.ok) return;
      const page = await res.json();
      for (const item of page.items) { add(stream, item.data); cursors[stream] = item.id; }
      if (!page.next) return;
    }
  }

  function status(text) { document.getElementById("conn").textContent = text; }

  async function start(jobId) {
    const res = await fetch(`/v1/jobs/${jobId}`);
    view.job = await res.json();
    view.config = view.job.config || "";
    await history(jobId, "metrics");
    await history(jobId, "rank1");
    await history(jobId, "samples");
    LF.render(view);
    bindCancel(jobId);
    const after = [cursors.metrics, cursors.rank1, "0-0", cursors.samples].join("|");
    const source = new EventSource(`/v1/jobs/${jobId}/stream?after=${encodeURIComponent(after)}`);
    for (const stream of ["metrics", "rank1", "events", "samples"]) {
      source.addEventListener(stream, (e) => { add(stream, JSON.parse(e.data)); redraw(); });
    }
    source.addEventListener("state", (e) => { view.job.state = JSON.parse(e.data).state; redraw(); });
    source.addEventListener("end", () => { source.close(); status("job finished"); redraw(); });
    source.onopen = () => status("live");
    source.onerror = () => status("reconnecting…");
  }

  function bindCancel(jobId) {
    const button = document.getElementById("cancel");
    button.addEventListener("click", async () => {
      let token = sessionStorage.getItem("leapfrog-token") || "";
      for (let attempt = 0; attempt < 2; attempt++) {
        const headers = token ? {Authorization: "Bearer " + token} : {};
        const res = await fetch(`/v1/jobs/${jobId}/cancel`, {method: "POST", headers});
        if (res.status !== 401) { const job = await res.json(); view.job.state = job.state || view.job.state; redraw(); return; }
        token = window.prompt("API token (LEAPFROG_API_TOKEN)") || "";
        sessionStorage.setItem("leapfrog-token", token);
      }
    });
  }

  return {start, view};
})();
