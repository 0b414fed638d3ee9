"""The conformance report as one self-contained HTML page (no network, no files beside it).

The page carries the report document (the same data as the JSON file) in a
``<script type="application/json">`` element and renders it with a small script: a summary, then
per guarantee its verdict, the sentence, what the search explored with a chart of distinct
interleavings over the examples (the coverage curve: flat means the search stopped finding new
orders), the ``exists`` outcomes and when they were reached, and for a violation its per-thread
timeline, one column per thread as in the terminal. When the script has rendered everything it
sets ``data-rendered`` on ``<body>`` (``data-error`` if it failed), which the browser test reads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222;max-width:70em}
h1{font-size:1.5em} h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:.2em .5em;vertical-align:top}
th{background:#f3f3f3;text-align:left} .num{text-align:right}
.pass{color:#176f2c}.fail,.error,.unexpected{color:#b00020;font-weight:bold}.skip{color:#777}
blockquote{margin:.3em 0 .3em 1em;color:#444;font-style:italic}
table.timeline td{font:12px/1.3 ui-monospace,monospace;white-space:pre-wrap;min-width:14em}
svg.chart{border:1px solid #ddd;background:#fcfcfc} .muted{color:#777}
"""

SCRIPT = r"""
(function () {
  "use strict";
  function el(tag, attrs, children) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    (children || []).forEach(function (c) {
      e.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return e;
  }
  function svg(tag, attrs) {
    var e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    return e;
  }
  function chart(curve, examples, reached) {
    // Distinct interleavings (y) after each example (x); marks where `exists` outcomes were reached.
    var w = 420, h = 120, pad = 28;
    var s = svg("svg", {"class": "chart", width: w, height: h, role: "img"});
    var maxX = Math.max(examples, 1), maxY = Math.max.apply(null, [1].concat(curve.map(function (p) { return p[1]; })));
    function x(v) { return pad + (w - 2 * pad) * v / maxX; }
    function y(v) { return h - pad + 8 - (h - 2 * pad) * v / maxY; }
    s.appendChild(svg("line", {x1: pad, y1: y(0), x2: w - pad, y2: y(0), stroke: "#999"}));
    s.appendChild(svg("line", {x1: pad, y1: y(0), x2: pad, y2: y(maxY), stroke: "#999"}));
    var pts = [[0, 0]].concat(curve).map(function (p) { return x(p[0]) + "," + y(p[1]); }).join(" ");
    s.appendChild(svg("polyline", {points: pts, fill: "none", stroke: "#1f5fbf", "stroke-width": 2,
                                   "class": "curve"}));
    reached.forEach(function (r) {
      s.appendChild(svg("line", {x1: x(r.example), y1: y(0), x2: x(r.example), y2: y(maxY),
                                 stroke: "#2a9d3a", "stroke-dasharray": "3,3", "class": "reached"}));
    });
    var t1 = svg("text", {x: pad, y: 12, "font-size": 11}); t1.textContent = maxY + " interleavings";
    var t2 = svg("text", {x: w - pad, y: h - 4, "font-size": 11, "text-anchor": "end"});
    t2.textContent = examples + " examples";
    s.appendChild(t1); s.appendChild(t2);
    var title = svg("title", {}); title.textContent = "distinct interleavings over the examples";
    s.appendChild(title);
    return s;
  }
  function timeline(v) {
    var head = el("tr", {}, [el("th", {}, ["#"])].concat(v.threads.map(function (t) { return el("th", {}, [t]); })));
    var rows = v.timeline.map(function (e) {
      return el("tr", {}, [el("td", {"class": "num"}, [String(e.index)])].concat(v.threads.map(function (t) {
        return el("td", {}, [t === e.thread ? (e.texts.join("; ") || "(returns)") : ""]);
      })));
    });
    return el("table", {"class": "timeline"}, [head].concat(rows));
  }
  function guarantee(g) {
    var c = g.coverage || {};
    var parts = [
      el("h2", {id: g.id}, [g.id + " " + g.title + " ", el("span", {"class": g.verdict.split(" ")[0]}, [g.verdict])]),
      el("blockquote", {}, ["\u201c" + g.quote + "\u201d"]),
      el("div", {"class": "muted"}, [g.document + ", " + g.section + "; text " + g.versions])
    ];
    if (g.reason) { parts.push(el("p", {}, [g.reason])); }
    if (c.examples !== undefined) {
      parts.push(el("table", {"class": "coverage"}, [
        el("tr", {}, [el("th", {}, ["examples"]), el("td", {"class": "num"}, [String(c.examples)])]),
        el("tr", {}, [el("th", {}, ["distinct interleavings"]), el("td", {"class": "num"}, [String(c.interleavings)])]),
        el("tr", {}, [el("th", {}, ["examples to the first violation"]),
                      el("td", {"class": "num"}, [c.first_violation === null ? "none" : String(c.first_violation)])]),
        el("tr", {}, [el("th", {}, ["time drawing / running (s)"]),
                      el("td", {"class": "num"}, [c.seconds_drawing + " / " + c.seconds_running])])
      ]));
      (c.exists || []).forEach(function (r) {
        parts.push(el("div", {"class": "exists"}, ["exists " + r.condition + ": " +
          (r.example === null ? "not reached" : "reached after " + r.example + " examples")]));
      });
      var reached = (c.exists || []).filter(function (r) { return r.example !== null; });
      parts.push(chart(c.curve || [], c.examples, reached));
    }
    if (g.violation) {
      parts.push(el("h3", {}, ["violation: " + g.violation.kind + ": " + g.violation.message]));
      parts.push(timeline(g.violation));
    }
    return el("section", {"class": "guarantee", "data-id": g.id}, parts);
  }
  try {
    var doc = JSON.parse(document.getElementById("kvmconf-data").textContent);
    var root = document.getElementById("report");
    root.appendChild(el("h1", {}, ["KVM conformance of backend " + doc.backend.name]));
    root.appendChild(el("p", {}, ["Document text " + doc.doc_version + ", search profile " + doc.profile_in_force +
      ", " + doc.schedule + " schedules, started " + doc.started + " (" + doc.seconds + " s)."]));
    var head = el("tr", {}, ["Guarantee", "Verdict", "Examples", "Interleavings", "Time (s)"].map(function (h) {
      return el("th", {}, [h]); }));
    var rows = doc.guarantees.map(function (g) {
      var c = g.coverage || {};
      return el("tr", {}, [el("td", {}, [el("a", {href: "#" + g.id}, [g.id])]),
        el("td", {"class": g.verdict.split(" ")[0]}, [g.verdict]),
        el("td", {"class": "num"}, [g.examples === null ? "" : String(g.examples)]),
        el("td", {"class": "num"}, [c.interleavings === undefined ? "" : String(c.interleavings)]),
        el("td", {"class": "num"}, [String(g.seconds)])]);
    });
    root.appendChild(el("table", {"class": "summary"}, [head].concat(rows)));
    doc.guarantees.forEach(function (g) { root.appendChild(guarantee(g)); });
    document.body.setAttribute("data-rendered", String(doc.guarantees.length));
  } catch (err) {
    document.body.setAttribute("data-error", String(err && err.stack || err));
  }
})();
"""


def page(doc: Mapping[str, Any]) -> str:
    # No "<" at all in the data element, so nothing in it can close it or open a tag.
    data = json.dumps(doc).replace("<", "\\u003c")
    title = f"KVM conformance of backend {doc['backend']['name']}"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_escape(title)}</title><style>{STYLE}</style></head>\n"
            f"<body><main id=\"report\"></main>\n"
            f"<script type=\"application/json\" id=\"kvmconf-data\">{data}</script>\n"
            f"<script>{SCRIPT}</script></body></html>\n")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
