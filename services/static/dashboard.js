// Leapfrog run dashboard: draws one run's learning and weight trajectory with Plotly (served from the plotly
// wheel, no CDN). The same code renders the live job page (fed by the control plane's SSE stream) and the
// static report of `leapfrog analyze RUN_DIR --html` (fed by an embedded JSON document).
//
// A view is {job, metrics: [{step, reward_mean, "rewards/<name>/mean", ...}], evals: [{step, accuracy}], rank1:
// [{step, rows: [{module, layer, type, e1?, energy1, s1, stability_u?, stability_v?}], backtest: {method: {cos}},
// linear_r2: {median}, by_type: {type: {growth_p}}}], events: [{type, step, ...}], samples: [{step, prompt,
// completion, answer, rewards: {name: value}, reward, and for a multi-turn job conversation: [{role, content}]}]}.
// Text from the run (prompts, completions) is only ever set as textContent, never parsed as HTML.
"use strict";

const LF = (() => {
  const COLORS = {leap_applied: "#1f77b4", leap_paid: "#2ca02c", leap_rolled_back: "#d62728",
                  leap_rejected: "#ff7f0e", control_branch: "#9467bd"};
  const PLOT_CONFIG = {displaylogo: false, responsive: true};
  const state = {view: null, heatStep: null, follow: true};  // follow: the heatmap shows the newest checkpoint

  function median(xs) {
    const v = xs.filter((x) => typeof x === "number" && isFinite(x)).sort((a, b) => a - b);
    if (!v.length) return null;
    const m = Math.floor(v.length / 2);
    return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
  }

  function byStep(records) {
    const out = new Map();
    for (const r of records) out.set(r.step, r);
    return [...out.values()].sort((a, b) => a.step - b.step);
  }

  function leapShapes(events) {
    const shapes = [], notes = [];
    for (const e of events) {
      if (!(e.type in COLORS) || typeof e.step !== "number") continue;
      shapes.push({type: "line", xref: "x", yref: "paper", x0: e.step, x1: e.step, y0: 0, y1: 1,
                   line: {color: COLORS[e.type], width: 1.5, dash: "dot"}});
      notes.push({x: e.step, y: 1, xref: "x", yref: "paper", yanchor: "bottom", showarrow: false,
                  text: e.type.replace("leap_", "") + (e.method ? " " + e.method : "") +
                        (e.scale !== undefined ? " x" + e.scale : ""),
                  font: {size: 9, color: COLORS[e.type]}, textangle: -30});
    }
    return {shapes, annotations: notes};
  }

  function drawCurves(view) {
    const metrics = byStep(view.metrics.filter((m) => typeof m.reward_mean === "number"));
    const evals = byStep(view.evals);
    const traces = [
      {x: metrics.map((m) => m.step), y: metrics.map((m) => m.reward_mean), name: "train reward (mean)",
       mode: "lines", line: {color: "#7f7f7f"}},
      {x: evals.map((e) => e.step), y: evals.map((e) => e.accuracy), name: "held-out accuracy (greedy)",
       mode: "lines+markers", yaxis: "y2", line: {color: "#2ca02c"}},
    ];
    Plotly.react("chart-curves", traces, {
      title: {text: "Learning: reward and held-out accuracy (leap events marked)"}, ...leapShapes(view.events),
      xaxis: {title: {text: "trajectory step"}}, yaxis: {title: {text: "mean reward (0-1)"}, rangemode: "tozero"},
      yaxis2: {title: {text: "held-out accuracy (fraction)"}, overlaying: "y", side: "right", rangemode: "tozero"},
      legend: {orientation: "h", y: -0.32}, margin: {t: 60, r: 70},
    }, PLOT_CONFIG);
  }

  function num(x) { return typeof x === "number" && isFinite(x) ? x : null; }

  function rewardNames(metrics) {
    const names = new Set();
    for (const m of metrics) {
      for (const key of Object.keys(m)) {
        const match = /^rewards\/(.+)\/mean$/.exec(key);
        if (match) names.add(match[1]);
      }
    }
    return [...names].sort();
  }

  // The chart's element, cleared of its waiting text once there is data to draw; null (showing `waiting`) before.
  function chartTarget(id, ready, waiting) {
    const target = document.getElementById(id);
    if (!ready) {
      target.textContent = waiting;
      return null;
    }
    if (!target.data) target.textContent = "";
    return target;
  }

  function drawRewards(view) {
    const metrics = byStep(view.metrics);
    const names = rewardNames(metrics);
    const target = chartTarget("chart-rewards", names.length > 0,
      "per-reward curves (rewards/<name>/mean) appear with the first step");
    if (!target) return;
    const steps = metrics.map((m) => m.step);
    const traces = names.map((n) => ({x: steps, y: metrics.map((m) => num(m[`rewards/${n}/mean`])),
      name: n + " (mean ± std)", mode: "lines+markers",
      error_y: {type: "data", array: metrics.map((m) => num(m[`rewards/${n}/std`]) || 0), visible: true,
                thickness: 1}}));
    for (const n of names.filter((n) => metrics.some((m) => num(m[`reward_errors/${n}`])))) {
      traces.push({x: steps, y: metrics.map((m) => num(m[`reward_errors/${n}`])), name: "errors " + n,
                   mode: "lines", yaxis: "y2", line: {dash: "dot"}});
    }
    Plotly.react("chart-rewards", traces, {
      title: {text: "Rewards per function (train, mean ± std over the step's completions)"},
      ...leapShapes(view.events), xaxis: {title: {text: "trajectory step"}}, yaxis: {title: {text: "reward"}},
      yaxis2: {title: {text: "reward errors"}, overlaying: "y", side: "right", rangemode: "tozero"},
      legend: {orientation: "h", y: -0.32}, margin: {t: 60, r: 70},
    }, PLOT_CONFIG);
  }

  function drawCompletions(view) {
    const metrics = byStep(view.metrics.filter((m) => typeof m["completions/mean_length"] === "number"));
    const steps = metrics.map((m) => m.step);
    const line = (key, name, axis) => ({x: steps, y: metrics.map((m) => num(m[key])), name, mode: "lines",
                                        yaxis: axis});
    Plotly.react("chart-completions", [
      line("completions/mean_length", "mean length", "y"), line("completions/max_length", "max length", "y"),
      line("completions/clipped_ratio", "truncated (share)", "y2"),
      line("frac_reward_zero_std", "groups with zero reward spread (share)", "y2"),
      line("entropy", "entropy (nats per token)", "y2"),
    ], {
      title: {text: "Completions: length, truncation, zero-spread groups, entropy"},
      xaxis: {title: {text: "trajectory step"}}, yaxis: {title: {text: "tokens"}, rangemode: "tozero"},
      yaxis2: {title: {text: "share / nats"}, overlaying: "y", side: "right", rangemode: "tozero"},
      legend: {orientation: "h", y: -0.38}, margin: {t: 60, r: 70},
    }, PLOT_CONFIG);
  }

  function messageText(value) {
    if (typeof value === "string") return value;
    if (Array.isArray(value)) {
      return value.map((m) => (m && typeof m === "object" && "content" in m ?
        (m.role ? m.role + ": " : "") + m.content : JSON.stringify(m))).join("\n");
    }
    return value === undefined || value === null ? "" : JSON.stringify(value);
  }

  function drawSamples(view, limit = 200) {
    const samples = [...view.samples].reverse().sort((a, b) => b.step - a.step).slice(0, limit);  // newest first
    const names = [...new Set(samples.flatMap((s) => Object.keys(s.rewards || {})))].sort();
    const table = document.getElementById("samples");
    table.replaceChildren();
    const head = document.createElement("tr");
    for (const h of ["step", "prompt", "completion", "answer", "reward", ...names]) {
      const th = document.createElement("th"); th.textContent = h; head.appendChild(th);
    }
    table.appendChild(head);
    const score = (x) => (typeof x === "number" ? x.toFixed(3) : "–");
    for (const s of samples) {
      const tr = document.createElement("tr");
      const cells = [[String(s.step), ""], [messageText(s.prompt), "text"],
                     [messageText(s.conversation || s.completion), "text"],
                     [messageText(s.answer), "text"], [score(s.reward), ""],
                     ...names.map((n) => [score((s.rewards || {})[n]), ""])];
      for (const [text, cls] of cells) {
        const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls;
        tr.appendChild(td);
      }
      table.appendChild(tr);
    }
    document.getElementById("samples-note").textContent = samples.length ? "newest first; " + samples.length +
      " of " + view.samples.length + " sampled completions" : "completions sampled at each evaluation appear here";
  }

  function heatmapData(record) {
    const types = [...new Set(record.rows.map((r) => r.type))].sort();
    const layers = [...new Set(record.rows.map((r) => r.layer))].sort((a, b) => a - b);
    const metric = record.rows.every((r) => typeof r.e1 === "number") ? "e1" : "energy1";
    const z = layers.map((l) => types.map((t) => {
      const row = record.rows.find((r) => r.layer === l && r.type === t);
      return row ? row[metric] : null;
    }));
    return {types, layers, z, metric};
  }

  function drawHeatmap(view) {
    const records = view.rank1.filter((r) => r.rows && r.rows.length);
    const slider = document.getElementById("heat-step");
    const target = chartTarget("chart-heatmap", records.length > 0, "rank-1 data arrives from the second checkpoint on");
    if (!target) return;
    const steps = records.map((r) => r.step);
    slider.min = 0; slider.max = steps.length - 1;
    if (state.follow || state.heatStep === null) state.heatStep = steps.length - 1;
    slider.value = state.heatStep;
    const record = records[Math.min(state.heatStep, records.length - 1)];
    document.getElementById("heat-step-label").textContent = "step " + record.step;
    const {types, layers, z, metric} = heatmapData(record);
    Plotly.react("chart-heatmap", [{type: "heatmap", x: types, y: layers.map((l) => "layer " + l), z,
      colorscale: "Viridis", zmin: 0, zmax: 1, colorbar: {title: {text: metric}},
      hovertemplate: "%{y} %{x}: " + metric + " %{z:.3f}<extra></extra>"}], {
      title: {text: "Rank-1 dominance (" + metric + ") by layer and module at step " + record.step},
      xaxis: {title: {text: "module type"}}, yaxis: {title: {text: "layer"}, autorange: "reversed"},
      height: Math.max(320, 120 + 14 * layers.length), margin: {t: 60},
    }, PLOT_CONFIG);
    const series = records.map((r) => median(r.rows.map((x) => (metric in x ? x[metric] : null))));
    Plotly.react("chart-dominance", [{x: steps, y: series, mode: "lines+markers", name: "median " + metric},
      {x: steps, y: records.map((r) => median(r.rows.map((x) => x.energy1))), mode: "lines+markers",
       name: "median energy1"}], {
      title: {text: "Rank-1 dominance over steps (median over modules)"},
      xaxis: {title: {text: "trajectory step"}}, yaxis: {title: {text: "share (0-1)"}, range: [0, 1]},
      legend: {orientation: "h", y: -0.32},
    }, PLOT_CONFIG);
  }

  function drawStability(view) {
    const records = view.rank1.filter((r) => r.rows && r.rows.length);
    const steps = records.map((r) => r.step);
    Plotly.react("chart-stability", [
      {x: steps, y: records.map((r) => median(r.rows.map((x) => x.stability_u))), name: "|cos u1| vs previous",
       mode: "lines+markers"},
      {x: steps, y: records.map((r) => median(r.rows.map((x) => x.stability_v))), name: "|cos v1| vs previous",
       mode: "lines+markers"},
      {x: steps, y: records.map((r) => (r.linear_r2 ? r.linear_r2.median : null)), name: "linear_r2 (median)",
       mode: "lines+markers", yaxis: "y2"},
    ], {
      title: {text: "Subspace stability and linearity"}, xaxis: {title: {text: "trajectory step"}},
      yaxis: {title: {text: "|cosine| (median over modules)"}, range: [0, 1.02]},
      yaxis2: {title: {text: "linear_r2"}, overlaying: "y", side: "right"}, legend: {orientation: "h", y: -0.32},
    }, PLOT_CONFIG);
  }

  function drawPredictability(view) {
    const records = view.rank1.filter((r) => r.backtest || r.by_type);
    const steps = records.map((r) => r.step);
    const methods = [...new Set(records.flatMap((r) => Object.keys(r.backtest || {})))].sort();
    const traces = methods.map((m) => ({x: steps, y: records.map((r) => (r.backtest && r.backtest[m] &&
      isFinite(r.backtest[m].cos) ? r.backtest[m].cos : null)), name: "backtest cos " + m, mode: "lines+markers"}));
    traces.push({x: steps, y: records.map((r) => median(Object.values(r.by_type || {}).map((t) => t.growth_p))),
                 name: "growth exponent p", mode: "lines+markers", yaxis: "y2", line: {dash: "dash", color: "#000"}});
    Plotly.react("chart-predictability", traces, {
      title: {text: "Predictability: backtest cosine per extrapolator and growth exponent of ||W_t - W_0||"},
      xaxis: {title: {text: "trajectory step"}}, yaxis: {title: {text: "cos(predicted, actual displacement)"},
      range: [-1, 1]}, yaxis2: {title: {text: "p (1 drift, 0.5 random walk)"}, overlaying: "y", side: "right",
      range: [0, 1.5]}, legend: {orientation: "h", y: -0.38},
    }, PLOT_CONFIG);
    const last = [...view.events].reverse().find((e) => e.type === "no_leap" || e.type === "proposal");
    document.getElementById("leap-reason").textContent = !last ? "no leap decision yet" :
      last.type === "no_leap" ? "Not leaping at step " + last.step + ": " + last.reason :
      "Leap proposed at step " + last.step + " (" + last.method + ", horizon " + last.horizon + ", backtest cos " +
      (last.backtest_cos === null || last.backtest_cos === undefined ? "not gated" : last.backtest_cos.toFixed(2)) + ")";
  }

  function drawLeaps(view) {
    const proposals = view.events.filter((e) => e.type === "proposal");
    const records = view.rank1.filter((r) => r.rows && r.rows.length);
    const traces = [];
    const modules = [...new Set(proposals.flatMap((p) => Object.keys(p.predicted_s1 || {})))].slice(0, 4);
    modules.forEach((mod, i) => {
      const color = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"][i];
      traces.push({x: records.map((r) => r.step), y: records.map((r) => {
        const row = r.rows.find((x) => x.module === mod); return row ? row.s1 : null; }),
        name: "actual s1 " + mod, mode: "lines+markers", line: {color}});
      const pts = proposals.filter((p) => p.predicted_s1 && p.predicted_s1[mod]);
      traces.push({x: pts.map((p) => p.step + p.horizon), y: pts.map((p) => p.predicted_s1[mod]),
                   name: "predicted s1 " + mod, mode: "markers", marker: {symbol: "x", size: 11, color}});
    });
    Plotly.react("chart-leap-s1", traces, {
      title: {text: "Leaps: predicted vs actual s1 of the update (selected modules)"},
      xaxis: {title: {text: "trajectory step"}}, yaxis: {title: {text: "s1 (top singular value)"}},
      legend: {orientation: "h", y: -0.38},
    }, PLOT_CONFIG);
    const bars = [{x: proposals.map((p) => "step " + p.step), y: proposals.map((p) => p.current_acc),
                   name: "current policy", type: "bar"}];
    const scales = [...new Set(proposals.flatMap((p) => p.candidates.map((c) => c.scale)))];
    for (const s of scales) {
      bars.push({x: proposals.map((p) => "step " + p.step), type: "bar", name: "candidate x" + s,
                 y: proposals.map((p) => { const c = p.candidates.find((k) => k.scale === s);
                                           return c ? p.current_acc + c.diff : null; })});
    }
    Plotly.react("chart-candidates", bars, {
      title: {text: "Leap candidates: held-out accuracy vs the current policy (paired)"}, barmode: "group",
      xaxis: {title: {text: "proposal"}}, yaxis: {title: {text: "held-out accuracy (fraction)"}},
      legend: {orientation: "h", y: -0.38},
    }, PLOT_CONFIG);
    const verdicts = view.events.filter((e) => e.type === "leap_paid" || e.type === "leap_rolled_back" ||
                                               e.type === "leap_rejected");
    const table = document.getElementById("leap-verdicts");
    table.replaceChildren();
    const head = document.createElement("tr");
    for (const h of ["leap", "from step", "verdict", "leap - control (or trend)", "s.e."]) {
      const th = document.createElement("th"); th.textContent = h; head.appendChild(th);
    }
    table.appendChild(head);
    for (const v of verdicts) {
      const tr = document.createElement("tr");
      const diff = v.leap_minus_control !== undefined ? v.leap_minus_control :
        v.gain_since_leap !== undefined ? v.gain_since_leap - v.trend_gain : v.best_diff;
      for (const cell of [v.id || "-", v.from_step !== undefined ? v.from_step : v.step,
                          v.type.replace("leap_", "").replace("_", " "),
                          typeof diff === "number" ? (100 * diff).toFixed(1) + " points" : "-",
                          typeof v.se === "number" ? (100 * v.se).toFixed(1) : "-"]) {
        const td = document.createElement("td"); td.textContent = cell; tr.appendChild(td);
      }
      table.appendChild(tr);
    }
  }

  function drawJob(view) {
    const job = view.job || {};
    document.getElementById("job-state").textContent = job.state || "finished run (offline report)";
    document.getElementById("job-config").textContent = job.config || view.config || "";
    const cancel = document.getElementById("cancel");
    if (cancel) cancel.hidden = !job.id || ["SUCCEEDED", "FAILED", "CANCELLED"].includes(job.state);
  }

  function render(view) {
    view.samples = view.samples || [];
    state.view = view;
    document.body.dataset.checkpoints = String(view.rank1.filter((r) => r.rows && r.rows.length).length);
    drawJob(view);
    drawCurves(view);
    drawRewards(view);
    drawCompletions(view);
    drawSamples(view);
    drawHeatmap(view);
    drawStability(view);
    drawPredictability(view);
    drawLeaps(view);
  }

  function bindSlider() {
    const slider = document.getElementById("heat-step");
    slider.addEventListener("input", () => {
      state.heatStep = Number(slider.value);
      state.follow = state.heatStep === Number(slider.max);
      drawHeatmap(state.view);
    });
  }

  return {render, bindSlider, state};
})();
