/* nebench interactive map: WebGL point renderer (canvas 2D density fallback), pan/zoom,
 * colour by label with a legend, hover tooltip, lasso and legend selection linked across maps.
 * No dependencies and no network loads: the data lie in <script id="nebench-data">, written by
 * nebench/map.py (coordinates quantised to uint16 per axis, labels as uint8/uint16 codes,
 * both base64). Test hook: window.nebench (maps, select, hover, selftest). */
(function () {
  "use strict";

  var BG = [1, 1, 1];
  var FADED = [195, 195, 195, 120]; // unselected points while a selection exists
  var HOVER_RADIUS = 8; // px
  // while the view moves, frames draw this many points: the GPU buffers are in a random order,
  // so their first LOD_POINTS are a uniform sample; the full map follows once the view rests
  var LOD_POINTS = 250000, LOD_REST_MS = 200;
  // the canvas renderer draws squares per point up to this many points, a density view above
  var CANVAS_POINTS = 100000;

  function b64bytes(s) {
    var bin = atob(s), out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  function decode(s, kind) {
    var bytes = b64bytes(s);
    if (kind === "u1") return bytes;
    if (kind === "u2") return new Uint16Array(bytes.buffer, 0, bytes.length >> 1);
    return new Uint32Array(bytes.buffer, 0, bytes.length >> 2);
  }
  function hexRGB(h) {
    return [parseInt(h.substr(1, 2), 16), parseInt(h.substr(3, 2), 16), parseInt(h.substr(5, 2), 16)];
  }
  function el(tag, cls, parent, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }
  function now() { return performance.now(); }

  /* ---------------- shared state: points, labels, selection ---------------- */
  function App(data, root) {
    this.data = data;
    this.n = data.n_shown;
    this.ids = data.ids ? decode(data.ids, "u4") : null; // shown point -> dataset row
    this.codes = decode(data.labels, data.label_dtype);   // 0 = unlabelled, k+1 = class k
    this.names = data.label_names;                         // legend names, per class
    this.rgb = data.colors.map(hexRGB);
    this.text = data.text;                                 // per shown point, or null
    this.selection = null;                                 // Uint8Array or null (= none)
    this.nSelected = 0;
    this.hovered = -1;
    this.maps = [];
    this.forceCanvas = /renderer=canvas/.test(location.hash);
    var counts = new Uint32Array(this.names.length + 1);
    for (var i = 0; i < this.n; i++) counts[this.codes[i]]++;
    this.counts = counts;
    // a random drawing order, so that no class is drawn over all the others
    var order = new Uint32Array(this.n);
    for (i = 0; i < this.n; i++) order[i] = i;
    var seed = 12345;
    for (i = this.n - 1; i > 0; i--) {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      var j = seed % (i + 1), t = order[i];
      order[i] = order[j];
      order[j] = t;
    }
    this.order = order;
    this.build(root);
  }

  App.prototype.build = function (root) {
    var d = this.data, self = this;
    var head = el("div", "nb-head", root);
    el("h1", null, head, d.title);
    this.status = el("div", "nb-status", head);
    var body = el("div", "nb-body", root);
    var grid = el("div", d.maps.length === 1 ? "nb-maps single" : "nb-maps", body);
    grid.style.gridTemplateColumns = "repeat(" + Math.min(d.maps.length, 3) + ", minmax(0, 1fr))";
    for (var m = 0; m < d.maps.length; m++) this.maps.push(new MapView(this, m, grid));
    var side = el("div", "nb-side", body);
    var bar = el("div", "nb-bar", side);
    var clear = el("button", null, bar, "clear selection");
    clear.onclick = function () { self.select(null); };
    var lasso = el("button", null, bar, "lasso");
    lasso.title = "drag to lasso (or shift+drag at any time)";
    lasso.onclick = function () {
      self.lassoMode = !self.lassoMode;
      lasso.classList.toggle("on", self.lassoMode);
    };
    el("div", "nb-help", side, "drag: pan \u00b7 wheel: zoom \u00b7 shift+drag: lasso \u00b7 " +
       "click a label: select it (ctrl: add) \u00b7 double-click: reset view");
    this.legend = el("div", "nb-legend", side);
    this.legendRows = [];
    var entries = [];
    for (var k = 0; k < this.names.length; k++) entries.push(k + 1);
    if (this.counts[0]) entries.push(0);
    entries.forEach(function (code) {
      var row = el("div", "nb-row", self.legend);
      var sw = el("span", "nb-swatch", row);
      var c = code ? self.rgb[code - 1] : [170, 170, 170];
      sw.style.background = "rgb(" + c.join(",") + ")";
      el("span", "nb-name", row, code ? self.names[code - 1] : "unlabelled");
      // counts over all points (a sampled page selects among its sample)
      el("span", "nb-count", row, (d.label_counts ? d.label_counts[code] : self.counts[code]).toLocaleString());
      row.dataset.code = code;
      row.onclick = function (ev) { self.selectLabel(code, ev.ctrlKey || ev.metaKey || ev.shiftKey); };
      self.legendRows.push(row);
    });
    this.tooltip = el("div", "nb-tooltip", document.body);
    this.tooltip.style.display = "none";
    // the maps were sized before the legend took its place: size and fit them again
    this.maps.forEach(function (m) { m.resize(); m.resetView(); });
    this.updateStatus();
    // #select=NAME selects a label on opening (a link to a view of one class in every map)
    var want = /select=([^&]*)/.exec(location.hash);
    if (want) {
      var k = this.names.indexOf(decodeURIComponent(want[1]));
      if (k >= 0) this.selectLabel(k + 1, false);
    }
  };

  App.prototype.labelName = function (i) {
    var c = this.codes[i];
    return c ? this.names[c - 1] : "unlabelled";
  };
  App.prototype.rowOf = function (i) { return this.ids ? this.ids[i] : i; };

  App.prototype.updateStatus = function () {
    var d = this.data, s = d.n.toLocaleString() + " points";
    if (d.n_shown < d.n) s += " (density of all; points, hover and selection: a sample of " +
      d.n_shown.toLocaleString() + ")";
    if (this.selection) s += " \u00b7 " + this.nSelected.toLocaleString() + " selected";
    s += " \u00b7 " + this.maps.map(function (m) {
      return m.note ? m.renderer + ", " + m.note : m.renderer;
    }).filter(function (r, i, a) {
      return a.indexOf(r) === i;
    }).join("/");
    this.status.textContent = s;
  };

  /* selection: a Uint8Array over shown points (1 = selected), or null for none */
  App.prototype.select = function (sel) {
    var count = 0, i;
    if (sel) for (i = 0; i < this.n; i++) count += sel[i];
    this.selection = sel;
    this.nSelected = count;
    this.maps.forEach(function (m) { m.selectionChanged(); });
    // a legend row is on when all of its label's points are selected
    var self = this, selCounts = new Uint32Array(this.counts.length);
    if (sel) for (i = 0; i < this.n; i++) if (sel[i]) selCounts[this.codes[i]]++;
    this.legendRows.forEach(function (row) {
      var code = +row.dataset.code;
      row.classList.toggle("on", !!sel && self.counts[code] > 0 && selCounts[code] === self.counts[code]);
    });
    this.updateStatus();
    this.lastSelect = { count: count };
  };
  App.prototype.selectLabel = function (code, add) {
    var sel = add && this.selection ? this.selection.slice() : new Uint8Array(this.n);
    for (var i = 0; i < this.n; i++) if (this.codes[i] === code) sel[i] = 1;
    this.select(sel);
  };
  App.prototype.setHover = function (i, map, clientX, clientY) {
    this.hovered = i;
    var tip = this.tooltip;
    if (i < 0) {
      tip.style.display = "none";
    } else {
      tip.textContent = "";
      el("div", "nb-tip-head", tip, "#" + this.rowOf(i) + " \u00b7 " + this.labelName(i));
      if (this.text && this.text[i]) el("div", "nb-tip-text", tip, this.text[i]);
      tip.style.display = "block";
      var x = clientX + 14, y = clientY + 14;
      if (x + tip.offsetWidth > window.innerWidth) x = clientX - 14 - tip.offsetWidth;
      if (y + tip.offsetHeight > window.innerHeight) y = clientY - 14 - tip.offsetHeight;
      tip.style.left = x + window.scrollX + "px";
      tip.style.top = y + window.scrollY + "px";
    }
    this.maps.forEach(function (m) { m.drawOverlay(); });
  };

  /* ---------------- one map ---------------- */
  function MapView(app, m, parent) {
    var spec = app.data.maps[m];
    this.app = app;
    this.m = m;
    this.spec = spec;
    this.b = spec.bounds; // [xmin, xmax, ymin, ymax]
    this.q = decode(spec.xy, "u2"); // interleaved x, y (uint16)
    var box = el("div", "nb-map", parent);
    el("div", "nb-map-title", box, spec.title);
    var stage = el("div", "nb-stage", box);
    this.stage = stage;
    if (spec.density) {
      this.densityCanvas = el("canvas", "nb-layer", stage);
      this.densityImg = new Image();
      var self0 = this;
      this.densityImg.onload = function () { self0.draw(); };
      this.densityImg.src = "data:image/png;base64," + spec.density.png;
    }
    this.canvas = el("canvas", "nb-layer", stage);
    this.overlay = el("canvas", "nb-layer nb-overlay", stage);
    this.buildIndex();
    this.resize();
    // WebGL, unless the page asks for canvas (#renderer=canvas) or the browser has no WebGL;
    // a software WebGL (SwiftShader, llvmpipe: no GPU) draws many points slower than the
    // canvas density view, so above CANVAS_POINTS it gets that instead (#renderer=webgl keeps it)
    this.renderer = "webgl";
    if (app.forceCanvas || !this.initGL()) {
      this.renderer = "canvas";
    } else if (this.softwareGL() && app.n > CANVAS_POINTS && !/renderer=webgl/.test(location.hash)) {
      this.renderer = "canvas";
      this.note = "software WebGL (" + this.glName.split(/[ ,(]/)[0] + "): density view";
      this.gl = null;
      var fresh = el("canvas", "nb-layer");
      fresh.width = this.canvas.width;
      fresh.height = this.canvas.height;
      stage.replaceChild(fresh, this.canvas);
      this.canvas = fresh;
    }
    if (this.renderer === "canvas") this.ctx = this.canvas.getContext("2d");
    else {
      // a GPU reset (or a GPU process that restarts) loses the context: rebuild and redraw
      var me = this;
      this.canvas.addEventListener("webglcontextlost", function (ev) { ev.preventDefault(); });
      this.canvas.addEventListener("webglcontextrestored", function () {
        me.contextRestored = (me.contextRestored || 0) + 1;
        if (me.initGL()) me.draw();
      });
    }
    this.resetView();
    this.bindEvents();
    var self = this;
    window.addEventListener("resize", function () { self.resize(); self.draw(); });
  }

  MapView.prototype.resize = function () {
    var r = this.stage.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
    this.W = Math.max(1, Math.round(r.width));
    this.H = Math.max(1, Math.round(r.height));
    this.dpr = dpr;
    var canvases = [this.canvas, this.overlay];
    if (this.densityCanvas) canvases.push(this.densityCanvas);
    var self = this;
    canvases.forEach(function (c) {
      c.width = Math.round(self.W * dpr);
      c.height = Math.round(self.H * dpr);
    });
  };

  MapView.prototype.resetView = function () {
    var b = this.b, xr = b[1] - b[0] || 1, yr = b[3] - b[2] || 1;
    this.cx = (b[0] + b[1]) / 2;
    this.cy = (b[2] + b[3]) / 2;
    this.k = 0.95 * Math.min(this.W / xr, this.H / yr); // pixels per data unit
    this.k0 = this.k;
  };

  /* data position of shown point i */
  MapView.prototype.px = function (i) {
    var b = this.b;
    return this.W / 2 + (b[0] + this.q[2 * i] / 65535 * (b[1] - b[0]) - this.cx) * this.k;
  };
  MapView.prototype.py = function (i) {
    var b = this.b;
    return this.H / 2 - (b[2] + this.q[2 * i + 1] / 65535 * (b[3] - b[2]) - this.cy) * this.k;
  };

  /* uniform grid over the quantised square, for hover and lasso queries */
  MapView.prototype.buildIndex = function () {
    var n = this.app.n, q = this.q;
    var G = Math.max(1, Math.min(2048, Math.ceil(Math.sqrt(n / 4))));
    var cell = new Uint32Array(n), start = new Uint32Array(G * G + 1), order = new Uint32Array(n);
    for (var i = 0; i < n; i++) {
      var gx = Math.min(G - 1, (q[2 * i] * G / 65536) | 0);
      var gy = Math.min(G - 1, (q[2 * i + 1] * G / 65536) | 0);
      cell[i] = gx + gy * G;
      start[cell[i] + 1]++;
    }
    for (i = 0; i < G * G; i++) start[i + 1] += start[i];
    var fill = start.slice(0, G * G);
    for (i = 0; i < n; i++) order[fill[cell[i]]++] = i;
    this.G = G;
    this.cellStart = start;
    this.cellOrder = order;
  };

  MapView.prototype.nearest = function (x, y) {
    // x, y in CSS px relative to the stage; returns the nearest shown point within the radius
    var b = this.b, xr = b[1] - b[0] || 1, yr = b[3] - b[2] || 1, G = this.G;
    var dx = this.cx + (x - this.W / 2) / this.k, dy = this.cy - (y - this.H / 2) / this.k;
    var r = HOVER_RADIUS / this.k;
    var gx0 = Math.max(0, Math.floor((dx - r - b[0]) / xr * G)), gx1 = Math.min(G - 1, Math.floor((dx + r - b[0]) / xr * G));
    var gy0 = Math.max(0, Math.floor((dy - r - b[2]) / yr * G)), gy1 = Math.min(G - 1, Math.floor((dy + r - b[2]) / yr * G));
    var best = -1, bestD = HOVER_RADIUS * HOVER_RADIUS;
    for (var gy = gy0; gy <= gy1; gy++) {
      for (var gx = gx0; gx <= gx1; gx++) {
        var c = gx + gy * G;
        for (var s = this.cellStart[c]; s < this.cellStart[c + 1]; s++) {
          var i = this.cellOrder[s], ex = this.px(i) - x, ey = this.py(i) - y, d2 = ex * ex + ey * ey;
          if (d2 <= bestD) { bestD = d2; best = i; }
        }
      }
    }
    return best;
  };

  MapView.prototype.lassoSelect = function (poly, add) {
    // poly: [[x, y], ...] in CSS px; selects the shown points inside it (even-odd rule)
    var app = this.app, n = app.n, sel = add && app.selection ? app.selection.slice() : new Uint8Array(n);
    this.lastLasso = poly;
    var minx = Infinity, maxx = -Infinity, miny = Infinity, maxy = -Infinity;
    poly.forEach(function (p) {
      minx = Math.min(minx, p[0]); maxx = Math.max(maxx, p[0]);
      miny = Math.min(miny, p[1]); maxy = Math.max(maxy, p[1]);
    });
    for (var i = 0; i < n; i++) {
      var x = this.px(i);
      if (x < minx || x > maxx) continue;
      var y = this.py(i);
      if (y < miny || y > maxy) continue;
      var inside = false;
      for (var a = 0, c = poly.length - 1; a < poly.length; c = a++) {
        var pa = poly[a], pc = poly[c];
        if ((pa[1] > y) !== (pc[1] > y) && x < (pc[0] - pa[0]) * (y - pa[1]) / (pc[1] - pa[1]) + pa[0]) inside = !inside;
      }
      if (inside) sel[i] = 1;
    }
    app.select(sel);
  };

  /* ---------------- WebGL ---------------- */
  var VS = "attribute vec2 a_pos; attribute vec4 a_col; uniform vec2 u_scale; uniform vec2 u_offset;" +
    "uniform float u_size; varying vec4 v_col; void main() { gl_Position = vec4(a_pos * u_scale + u_offset, 0.0, 1.0);" +
    "gl_PointSize = u_size; v_col = a_col; }";
  var FS = "precision mediump float; varying vec4 v_col; uniform float u_round; void main() {" +
    "vec2 d = gl_PointCoord - vec2(0.5); if (u_round > 0.5 && dot(d, d) > 0.25) discard; gl_FragColor = v_col; }";

  MapView.prototype.initGL = function () {
    var gl = null;
    try {
      gl = this.canvas.getContext("webgl", { antialias: false, preserveDrawingBuffer: true, alpha: true });
    } catch (e) { gl = null; }
    if (!gl) return false;
    function shader(type, src) {
      var s = gl.createShader(type);
      gl.shaderSource(s, src);
      gl.compileShader(s);
      if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
      return s;
    }
    var p = gl.createProgram();
    gl.attachShader(p, shader(gl.VERTEX_SHADER, VS));
    gl.attachShader(p, shader(gl.FRAGMENT_SHADER, FS));
    gl.linkProgram(p);
    if (!gl.getProgramParameter(p, gl.LINK_STATUS)) return false;
    this.gl = gl;
    this.prog = p;
    this.loc = {
      pos: gl.getAttribLocation(p, "a_pos"), col: gl.getAttribLocation(p, "a_col"),
      scale: gl.getUniformLocation(p, "u_scale"), offset: gl.getUniformLocation(p, "u_offset"),
      size: gl.getUniformLocation(p, "u_size"), round: gl.getUniformLocation(p, "u_round")
    };
    var app = this.app, n = app.n, order = app.order, q = this.q;
    var pos = new Uint16Array(2 * n);
    for (var i = 0; i < n; i++) {
      pos[2 * i] = q[2 * order[i]];
      pos[2 * i + 1] = q[2 * order[i] + 1];
    }
    this.posBuf = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, this.posBuf);
    gl.bufferData(gl.ARRAY_BUFFER, pos, gl.STATIC_DRAW);
    this.colBuf = gl.createBuffer();
    this.selPosBuf = gl.createBuffer();
    this.selColBuf = gl.createBuffer();
    this.nSelDraw = 0;
    this.uploadColors();
    return true;
  };

  MapView.prototype.softwareGL = function () {
    var gl = this.gl, ext = gl.getExtension("WEBGL_debug_renderer_info");
    var name = String(gl.getParameter(ext ? ext.UNMASKED_RENDERER_WEBGL : gl.RENDERER) || "");
    this.glName = name;
    return /swiftshader|llvmpipe|softpipe|software/i.test(name);
  };

  MapView.prototype.pointColors = function (faded) {
    var app = this.app, n = app.n, order = app.order, col = new Uint8Array(4 * n), a = this.spec.alpha;
    var sel = app.selection;
    for (var j = 0; j < n; j++) {
      var i = order[j], c = app.codes[i], o = 4 * j;
      if (faded && sel && !sel[i]) {
        col[o] = FADED[0]; col[o + 1] = FADED[1]; col[o + 2] = FADED[2]; col[o + 3] = FADED[3];
      } else {
        var rgb = c ? app.rgb[c - 1] : [170, 170, 170];
        col[o] = rgb[0]; col[o + 1] = rgb[1]; col[o + 2] = rgb[2]; col[o + 3] = a;
      }
    }
    return col;
  };

  MapView.prototype.uploadColors = function () {
    var gl = this.gl, app = this.app;
    gl.bindBuffer(gl.ARRAY_BUFFER, this.colBuf);
    gl.bufferData(gl.ARRAY_BUFFER, this.pointColors(true), gl.DYNAMIC_DRAW);
    // the selected points again, drawn on top of the faded rest
    this.nSelDraw = 0;
    if (app.selection && app.nSelected) {
      var k = 0, pos = new Uint16Array(2 * app.nSelected), col = new Uint8Array(4 * app.nSelected);
      for (var i = 0; i < app.n; i++) {
        if (!app.selection[i]) continue;
        pos[2 * k] = this.q[2 * i]; pos[2 * k + 1] = this.q[2 * i + 1];
        var c = app.codes[i], rgb = c ? app.rgb[c - 1] : [120, 120, 120];
        col[4 * k] = rgb[0]; col[4 * k + 1] = rgb[1]; col[4 * k + 2] = rgb[2]; col[4 * k + 3] = 255;
        k++;
      }
      gl.bindBuffer(gl.ARRAY_BUFFER, this.selPosBuf);
      gl.bufferData(gl.ARRAY_BUFFER, pos, gl.DYNAMIC_DRAW);
      gl.bindBuffer(gl.ARRAY_BUFFER, this.selColBuf);
      gl.bufferData(gl.ARRAY_BUFFER, col, gl.DYNAMIC_DRAW);
      this.nSelDraw = k;
    }
  };

  MapView.prototype.pointSize = function () {
    var n = this.app.n, base = Math.sqrt(this.W * this.H / Math.max(n, 1)) * 0.55;
    base = Math.min(this.densityCanvas ? 2 : 6, Math.max(1, base)); // a sample over a raster: small
    return Math.min(16, base * Math.sqrt(this.k / this.k0));
  };

  MapView.prototype.drawGL = function () {
    var gl = this.gl, L = this.loc, b = this.b, xr = b[1] - b[0] || 1, yr = b[3] - b[2] || 1;
    gl.viewport(0, 0, this.canvas.width, this.canvas.height);
    if (this.densityCanvas) gl.clearColor(0, 0, 0, 0); // premultiplied: transparent over the raster
    else gl.clearColor(BG[0], BG[1], BG[2], 1);
    gl.clear(gl.COLOR_BUFFER_BIT);
    gl.enable(gl.BLEND);
    // "over" in premultiplied alpha, which the page compositor assumes of a WebGL canvas
    gl.blendFuncSeparate(gl.SRC_ALPHA, gl.ONE_MINUS_SRC_ALPHA, gl.ONE, gl.ONE_MINUS_SRC_ALPHA);
    gl.useProgram(this.prog);
    var sx = 2 * this.k / this.W, sy = 2 * this.k / this.H;
    gl.uniform2f(L.scale, sx * xr, sy * yr);
    gl.uniform2f(L.offset, sx * (b[0] - this.cx), sy * (b[2] - this.cy));
    var size = this.pointSize() * this.dpr;
    gl.uniform1f(L.size, size);
    gl.uniform1f(L.round, size >= 3 ? 1 : 0);
    var self = this;
    function pass(posBuf, colBuf, count) {
      gl.bindBuffer(gl.ARRAY_BUFFER, posBuf);
      gl.enableVertexAttribArray(L.pos);
      gl.vertexAttribPointer(L.pos, 2, gl.UNSIGNED_SHORT, true, 0, 0);
      gl.bindBuffer(gl.ARRAY_BUFFER, colBuf);
      gl.enableVertexAttribArray(L.col);
      gl.vertexAttribPointer(L.col, 4, gl.UNSIGNED_BYTE, true, 0, 0);
      gl.drawArrays(gl.POINTS, 0, count);
    }
    pass(this.posBuf, this.colBuf, this.interacting ? Math.min(this.app.n, LOD_POINTS) : this.app.n);
    if (this.nSelDraw) pass(this.selPosBuf, this.selColBuf, this.nSelDraw);
    void self;
  };

  /* canvas 2D: squares per point up to CANVAS_POINTS points, above that a density view at
   * screen resolution (mean colour of a pixel's points, opacity by log density) */
  MapView.prototype.drawCanvas = function () {
    var ctx = this.ctx, w = this.canvas.width, h = this.canvas.height, app = this.app, n = app.n;
    if (n <= CANVAS_POINTS) return this.drawCanvasPoints();
    var r = new Float32Array(w * h), g = new Float32Array(w * h), bl = new Float32Array(w * h), cnt = new Float32Array(w * h);
    var dpr = this.dpr, sel = app.selection, count = this.interacting ? Math.min(n, LOD_POINTS) : n;
    // palette by code (0 = unlabelled); the view as x = ax * q + bx in device pixels
    var nc = app.counts.length, pr = new Float32Array(nc), pg = new Float32Array(nc), pb = new Float32Array(nc);
    for (var c = 0; c < nc; c++) {
      var rgb = c ? app.rgb[c - 1] : [170, 170, 170];
      pr[c] = rgb[0]; pg[c] = rgb[1]; pb[c] = rgb[2];
    }
    var b = this.b, q = this.q, codes = app.codes, order = app.order;
    var ax = this.k * (b[1] - b[0]) / 65535 * dpr, bx = (this.W / 2 + (b[0] - this.cx) * this.k) * dpr;
    var ay = -this.k * (b[3] - b[2]) / 65535 * dpr, by = (this.H / 2 - (b[2] - this.cy) * this.k) * dpr;
    for (var j = 0; j < count; j++) {
      var i = order[j], x = Math.floor(ax * q[2 * i] + bx), y = Math.floor(ay * q[2 * i + 1] + by);
      if (x < 0 || y < 0 || x >= w || y >= h) continue;
      var o = x + y * w, k = codes[i];
      if (sel && !sel[i]) {
        r[o] += 0.2 * FADED[0]; g[o] += 0.2 * FADED[1]; bl[o] += 0.2 * FADED[2]; cnt[o] += 0.2;
      } else {
        r[o] += pr[k]; g[o] += pg[k]; bl[o] += pb[k]; cnt[o] += 1;
      }
    }
    var img = ctx.createImageData(w, h), px = img.data, maxc = 0;
    for (i = 0; i < w * h; i++) if (cnt[i] > maxc) maxc = cnt[i];
    var norm = Math.log(1 + Math.max(maxc, 1));
    for (i = 0; i < w * h; i++) {
      if (!cnt[i]) continue;
      px[4 * i] = r[i] / cnt[i]; px[4 * i + 1] = g[i] / cnt[i]; px[4 * i + 2] = bl[i] / cnt[i];
      px[4 * i + 3] = 80 + 175 * Math.log(1 + cnt[i]) / norm;
    }
    ctx.putImageData(img, 0, 0);
  };

  MapView.prototype.drawCanvasPoints = function () {
    var ctx = this.ctx, app = this.app, dpr = this.dpr, s = this.pointSize(), sel = app.selection;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, this.W, this.H);
    if (!app.byCode) { // rows grouped by label code, once
      var start = new Uint32Array(app.counts.length + 1), byCode = new Uint32Array(app.n), i;
      for (i = 0; i < app.n; i++) start[app.codes[i] + 1]++;
      for (i = 0; i < app.counts.length; i++) start[i + 1] += start[i];
      var fill = start.slice(0, app.counts.length);
      for (i = 0; i < app.n; i++) byCode[fill[app.codes[i]]++] = app.order[i];
      app.byCode = byCode;
      app.codeStart = start;
    }
    for (var pass = 0; pass < 2; pass++) { // unselected (faded when a selection exists), then selected
      for (var c = 0; c < app.counts.length; c++) {
        var rgb = c ? app.rgb[c - 1] : [170, 170, 170], faded = sel && pass === 0;
        ctx.fillStyle = faded ? "rgba(205,205,205,0.35)" : "rgba(" + rgb.join(",") + "," + (this.spec.alpha / 255) + ")";
        for (var j = app.codeStart[c]; j < app.codeStart[c + 1]; j++) {
          var k = app.byCode[j];
          if (sel ? (sel[k] ? 1 : 0) !== pass : pass === 1) continue;
          ctx.fillRect(this.px(k) - s / 2, this.py(k) - s / 2, s, s);
        }
      }
    }
  };

  MapView.prototype.drawDensity = function () {
    var c = this.densityCanvas, ctx = c.getContext("2d"), dpr = this.dpr, b = this.b, d = this.spec.density;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, c.width, c.height);
    if (!this.densityImg.complete || !this.densityImg.naturalWidth) return;
    var db = d.bounds; // the raster's extent in data units
    var x0 = (this.W / 2 + (db[0] - this.cx) * this.k) * dpr, x1 = (this.W / 2 + (db[1] - this.cx) * this.k) * dpr;
    var y0 = (this.H / 2 - (db[3] - this.cy) * this.k) * dpr, y1 = (this.H / 2 - (db[2] - this.cy) * this.k) * dpr;
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(this.densityImg, x0, y0, x1 - x0, y1 - y0);
    void b;
  };

  MapView.prototype.draw = function () {
    var t = now();
    if (this.densityCanvas) this.drawDensity();
    if (this.renderer === "webgl") this.drawGL(); else this.drawCanvas();
    this.drawOverlay();
    this.lastFrameMs = now() - t;
  };

  MapView.prototype.selectionChanged = function () {
    if (this.renderer === "webgl") this.uploadColors();
    this.draw();
  };

  MapView.prototype.drawOverlay = function () {
    var ctx = this.overlay.getContext("2d"), dpr = this.dpr;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, this.W, this.H);
    var h = this.app.hovered;
    if (h >= 0) { // the hovered point, ringed in every map
      ctx.beginPath();
      ctx.arc(this.px(h), this.py(h), 7, 0, 2 * Math.PI);
      ctx.lineWidth = 2;
      ctx.strokeStyle = "#000";
      ctx.stroke();
    }
    if (this.lasso && this.lasso.length > 1) {
      ctx.beginPath();
      ctx.moveTo(this.lasso[0][0], this.lasso[0][1]);
      for (var i = 1; i < this.lasso.length; i++) ctx.lineTo(this.lasso[i][0], this.lasso[i][1]);
      ctx.closePath();
      ctx.fillStyle = "rgba(0,0,0,0.06)";
      ctx.fill();
      ctx.setLineDash([4, 3]);
      ctx.lineWidth = 1;
      ctx.strokeStyle = "#333";
      ctx.stroke();
      ctx.setLineDash([]);
    }
  };

  MapView.prototype.bindEvents = function () {
    var self = this, app = this.app, st = this.stage, drag = null, pending = false;
    function local(ev) {
      var r = st.getBoundingClientRect();
      return [ev.clientX - r.left, ev.clientY - r.top];
    }
    var rest = null;
    function redraw() {
      self.interacting = true;
      clearTimeout(rest);
      rest = setTimeout(function () { self.interacting = false; self.draw(); }, LOD_REST_MS);
      if (pending) return;
      pending = true;
      requestAnimationFrame(function () { pending = false; self.draw(); });
    }
    this.redraw = redraw;
    st.addEventListener("mousedown", function (ev) {
      var p = local(ev);
      if (ev.shiftKey || app.lassoMode) {
        drag = { lasso: true, add: ev.ctrlKey || ev.metaKey };
        self.lasso = [p];
      } else {
        drag = { lasso: false, x: p[0], y: p[1], cx: self.cx, cy: self.cy };
      }
      ev.preventDefault();
    });
    window.addEventListener("mousemove", function (ev) {
      if (!drag) return;
      var p = local(ev);
      if (drag.lasso) {
        self.lasso.push(p);
        self.drawOverlay();
      } else {
        self.cx = drag.cx - (p[0] - drag.x) / self.k;
        self.cy = drag.cy + (p[1] - drag.y) / self.k;
        redraw();
      }
    });
    window.addEventListener("mouseup", function () {
      if (drag && drag.lasso) {
        var poly = self.lasso;
        self.lasso = null;
        if (poly.length > 2) self.lassoSelect(poly, drag.add);
        else self.drawOverlay();
      }
      drag = null;
    });
    st.addEventListener("mousemove", function (ev) {
      if (drag) return;
      var p = local(ev);
      app.setHover(self.nearest(p[0], p[1]), self, ev.clientX, ev.clientY);
    });
    st.addEventListener("mouseleave", function () { if (!drag) app.setHover(-1); });
    st.addEventListener("wheel", function (ev) {
      ev.preventDefault();
      var p = local(ev), f = Math.exp(-ev.deltaY * 0.0015);
      var dx = self.cx + (p[0] - self.W / 2) / self.k, dy = self.cy - (p[1] - self.H / 2) / self.k;
      self.k *= f;
      self.cx = dx - (p[0] - self.W / 2) / self.k;
      self.cy = dy + (p[1] - self.H / 2) / self.k;
      redraw();
    }, { passive: false });
    st.addEventListener("dblclick", function () { self.resetView(); redraw(); });
  };

  /* ---------------- test and benchmark hooks ---------------- */
  function fire(target, type, x, y, opts) {
    var init = { clientX: x, clientY: y, bubbles: true, cancelable: true, view: window };
    for (var k in opts || {}) init[k] = opts[k];
    target.dispatchEvent(type === "wheel" ? new WheelEvent(type, init) : new MouseEvent(type, init));
  }

  function countDrawn(map) {
    // pixels of the map's canvas that differ from the background (reads the WebGL buffer)
    var n = 0;
    if (map.renderer === "webgl") {
      var gl = map.gl, w = map.canvas.width, h = map.canvas.height, px = new Uint8Array(4 * w * h);
      gl.readPixels(0, 0, w, h, gl.RGBA, gl.UNSIGNED_BYTE, px);
      for (var i = 0; i < w * h; i++) if (px[4 * i] < 250 || px[4 * i + 1] < 250 || px[4 * i + 2] < 250) n++;
    } else {
      var d = map.ctx.getImageData(0, 0, map.canvas.width, map.canvas.height).data;
      for (i = 0; i < d.length; i += 4) if (d[i + 3] > 0) n++;
    }
    return n;
  }

  function selftest(app) {
    // synthetic user actions through the page's own event handlers; the result goes into the DOM
    var out = { renderer: app.maps.map(function (m) { return m.renderer; }), n_shown: app.n, maps: app.maps.length,
                gl_renderer: app.maps[0].glName || null };
    out.drawn_pixels = app.maps.map(countDrawn);
    out.density_pixels = app.maps.map(function (m) { // raster pixels drawn under a sampled map
      if (!m.densityCanvas) return 0;
      var d = m.densityCanvas.getContext("2d").getImageData(0, 0, m.densityCanvas.width, m.densityCanvas.height).data, k = 0;
      for (var i = 0; i < d.length; i += 4) if (d[i] < 250 || d[i + 1] < 250 || d[i + 2] < 250) k++;
      return k;
    });
    var m0 = app.maps[0], r = m0.stage.getBoundingClientRect();
    // hover: the mouse on (the whole pixel of) the point nearest the middle of the map; the
    // expected row is the nearest point to that pixel by brute force (the page uses its grid)
    function closest(x, y) {
      var best = Infinity, arg = -1;
      for (var i = 0; i < app.n; i++) {
        var ex = m0.px(i) - x, ey = m0.py(i) - y, d2 = ex * ex + ey * ey;
        if (d2 < best) { best = d2; arg = i; }
      }
      return arg;
    }
    var c = closest(m0.W / 2, m0.H / 2), mx = Math.round(m0.px(c)), my = Math.round(m0.py(c));
    var target = closest(mx, my), i;
    fire(m0.stage, "mousemove", r.left + mx, r.top + my);
    out.hover = { target_row: app.rowOf(target), hovered_row: app.hovered >= 0 ? app.rowOf(app.hovered) : null,
                  tooltip_head: app.tooltip.firstChild ? app.tooltip.firstChild.textContent : "",
                  tooltip: app.tooltip.textContent, tooltip_visible: app.tooltip.style.display !== "none",
                  // the hovered row's ring, drawn on each map's overlay (linked hover)
                  ring_pixels: app.maps.map(function (m) {
                    var d = m.overlay.getContext("2d").getImageData(0, 0, m.overlay.width, m.overlay.height).data, k = 0;
                    for (var a = 3; a < d.length; a += 4) if (d[a] > 0) k++;
                    return k;
                  }) };
    // legend: click the first label
    app.legendRows[0].dispatchEvent(new MouseEvent("click", { bubbles: true }));
    out.legend = { code: +app.legendRows[0].dataset.code, selected: app.nSelected,
                   legend_on: app.legendRows[0].classList.contains("on"),
                   per_map_selected: app.maps.map(function (m) {
                     return m.renderer === "webgl" ? m.nSelDraw : app.nSelected;
                   }) };
    out.legend.drawn_pixels_after = app.maps.map(countDrawn);
    // lasso (shift+drag) around the centre quarter of map 0, through mouse events
    var poly = [[0.25, 0.25], [0.75, 0.25], [0.75, 0.75], [0.25, 0.75]].map(function (p) {
      return [Math.round(p[0] * m0.W), Math.round(p[1] * m0.H)];
    });
    fire(m0.stage, "mousedown", r.left + poly[0][0], r.top + poly[0][1], { shiftKey: true });
    for (i = 1; i < poly.length; i++) fire(window, "mousemove", r.left + poly[i][0], r.top + poly[i][1], { shiftKey: true });
    fire(window, "mouseup", r.left + poly[0][0], r.top + poly[0][1], { shiftKey: true });
    var rows = [];
    for (i = 0; i < app.n; i++) if (app.selection && app.selection[i]) rows.push(app.rowOf(i));
    out.lasso = { polygon_px: m0.lastLasso, selected_rows: rows }; // as the page received it
    // the lassoed points, where they lie in every map (the same rows, linked)
    out.lasso.per_map_selected = app.maps.map(function (m) {
      return m.renderer === "webgl" ? m.nSelDraw : app.nSelected;
    });
    // zoom and pan through wheel and drag events
    var k0 = m0.k, cx0 = m0.cx;
    fire(m0.stage, "wheel", r.left + m0.W / 2, r.top + m0.H / 2, { deltaY: -300 });
    fire(m0.stage, "mousedown", r.left + 10, r.top + 10);
    fire(window, "mousemove", r.left + 60, r.top + 10);
    fire(window, "mouseup", r.left + 60, r.top + 10);
    out.zoom = { k_ratio: m0.k / k0, cx_moved: m0.cx !== cx0 };
    m0.resetView();
    m0.draw();
    app.select(null);
    app.setHover(-1);
    out.view = { W: m0.W, H: m0.H, k: m0.k, cx: m0.cx, cy: m0.cy };
    return out;
  }

  function sync(m) {
    // gl.finish() returns at once in Chromium; reading a pixel waits for the frame's GPU work
    if (m.gl) m.gl.readPixels(0, 0, 1, 1, m.gl.RGBA, m.gl.UNSIGNED_BYTE, new Uint8Array(4));
  }

  function bench(app, frames) {
    // frame time: redraw with a new view each frame, finished (gl.finish) before timing stops
    var m0 = app.maps[0], k0 = m0.k;
    function frameTimes(moving) {
      var times = [];
      m0.interacting = moving;
      for (var f = 0; f < frames; f++) {
        m0.k = k0 * (1 + 0.02 * f);
        m0.cx += 0.001 * (m0.b[1] - m0.b[0]);
        var t = now();
        m0.draw();
        sync(m0);
        times.push(now() - t);
      }
      m0.interacting = false;
      return times.sort(function (a, b) { return a - b; });
    }
    var times = frameTimes(false), moving = frameTimes(true);
    var t0 = now(), hits = 0;
    for (var i = 0; i < 200; i++) if (m0.nearest((i * 37) % m0.W, (i * 53) % m0.H) >= 0) hits++;
    var hoverMs = (now() - t0) / 200;
    t0 = now();
    m0.lassoSelect([[0, 0], [m0.W / 2, 0], [m0.W / 2, m0.H / 2], [0, m0.H / 2]]);
    sync(m0);
    var lassoMs = now() - t0;
    return { renderer: m0.renderer, gl_renderer: m0.glName || null, n_shown: app.n, frame_ms_median: times[times.length >> 1],
             frame_ms_max: times[times.length - 1], moving_frame_ms_median: moving[moving.length >> 1],
             moving_points: Math.min(app.n, LOD_POINTS), hover_ms: hoverMs, hover_hits: hits,
             lasso_select_ms: lassoMs, load_ms: app.loadMs };
  }

  function start() {
    var t = now();
    var data = JSON.parse(document.getElementById("nebench-data").textContent);
    var app = new App(data, document.getElementById("nebench-app"));
    app.maps.forEach(function (m) { m.draw(); sync(m); });
    app.loadMs = now() - t;
    window.nebench = { app: app, maps: app.maps, countDrawn: countDrawn };
    // the tests and the benchmark run once density rasters (data: URLs, decoded async) are in
    var rasters = app.maps.filter(function (m) { return m.densityImg; }).map(function (m) {
      return m.densityImg.decode().catch(function () {});
    });
    Promise.all(rasters).then(function () {
      var out = null;
      if (rasters.length) app.maps.forEach(function (m) { m.draw(); });
      if (/selftest/.test(location.hash)) out = selftest(app);
      var mb = /bench=(\d+)/.exec(location.hash);
      if (mb) out = bench(app, +mb[1]);
      if (out) {
        var pre = el("pre", null, document.body, JSON.stringify(out));
        pre.id = "nebench-result";
      }
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
