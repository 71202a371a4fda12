// IDU review: the 3D view of a change. WebGL2 Gaussian splats (scene around the change + the proposed
// asset), an orbit camera, and a gizmo (arrows move, rings rotate, the centre square scales) bound to the
// decision form's placement fields (dx dy dz in metres, rx ry rz in degrees with R = Rz Ry Rx, scale).
// Data: /viewer/<run>/<key>/splats.bin (review_ui/media.py: viewer_splats). No dependencies.
(function () {
  "use strict";

  // -- small maths (quaternions wxyz, 3x3 matrices row-major) ----------------------------------------
  function qmul(a, b) {
    return [a[0] * b[0] - a[1] * b[1] - a[2] * b[2] - a[3] * b[3],
            a[0] * b[1] + a[1] * b[0] + a[2] * b[3] - a[3] * b[2],
            a[0] * b[2] - a[1] * b[3] + a[2] * b[0] + a[3] * b[1],
            a[0] * b[3] + a[1] * b[2] - a[2] * b[1] + a[3] * b[0]];
  }
  function qnorm(q) { const n = Math.hypot(q[0], q[1], q[2], q[3]) || 1; return q.map(v => v / n); }
  function qaxis(axis, rad) { const s = Math.sin(rad / 2); return [Math.cos(rad / 2), axis[0] * s, axis[1] * s, axis[2] * s]; }
  function qmat(q) {
    const [w, x, y, z] = qnorm(q);
    return [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)];
  }
  const D2R = Math.PI / 180;
  function eulerQuat(rx, ry, rz) {  // R = Rz Ry Rx (degrees), as review_ui.app.euler_to_quat
    return qmul(qaxis([0, 0, 1], rz * D2R), qmul(qaxis([0, 1, 0], ry * D2R), qaxis([1, 0, 0], rx * D2R)));
  }
  function quatEuler(q) {
    const m = qmat(q);
    const ry = Math.asin(Math.max(-1, Math.min(1, -m[6])));
    return [Math.atan2(m[7], m[8]) / D2R, ry / D2R, Math.atan2(m[3], m[0]) / D2R];
  }
  const sub = (a, b) => [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
  const add = (a, b) => [a[0] + b[0], a[1] + b[1], a[2] + b[2]];
  const mul = (a, s) => [a[0] * s, a[1] * s, a[2] * s];
  const dot = (a, b) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
  const cross = (a, b) => [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];
  const unit = a => mul(a, 1 / (Math.hypot(a[0], a[1], a[2]) || 1));
  const mv = (m, v) => [m[0] * v[0] + m[1] * v[1] + m[2] * v[2], m[3] * v[0] + m[4] * v[1] + m[5] * v[2],
                        m[6] * v[0] + m[7] * v[1] + m[8] * v[2]];

  // -- WebGL2 splat renderer -----------------------------------------------------------------------
  const VS = `#version 300 es
precision highp float;
in vec2 corner; in vec3 center; in vec3 covA; in vec3 covB; in vec4 color;
uniform mat3 R; uniform vec3 T; uniform vec2 focal; uniform vec2 viewport;
out vec4 vColor; out vec2 vPos;
void main() {
  vec3 c = R * center + T;
  if (c.z < 0.05) { gl_Position = vec4(0.0, 0.0, 2.0, 1.0); return; }
  mat3 S = mat3(covA.x, covA.y, covA.z, covA.y, covB.x, covB.y, covA.z, covB.y, covB.z);
  mat3 J = mat3(focal.x / c.z, 0.0, 0.0, 0.0, focal.y / c.z, 0.0,
                -focal.x * c.x / (c.z * c.z), -focal.y * c.y / (c.z * c.z), 0.0);
  mat3 M = J * R;
  mat3 cv = M * S * transpose(M);
  float a = cv[0][0] + 0.3, b = cv[0][1], d = cv[1][1] + 0.3;
  float mid = 0.5 * (a + d), rad = length(vec2(0.5 * (a - d), b));
  float l1 = mid + rad, l2 = max(mid - rad, 0.1);
  vec2 v1 = abs(b) > 1e-7 ? normalize(vec2(b, l1 - a)) : (a >= d ? vec2(1.0, 0.0) : vec2(0.0, 1.0));
  vec2 v2 = vec2(-v1.y, v1.x);
  vec2 px = vec2(focal.x * c.x / c.z, focal.y * c.y / c.z) + 0.5 * viewport;
  vec2 p = px + corner.x * min(3.0 * sqrt(l1), 2048.0) * v1 + corner.y * min(3.0 * sqrt(l2), 2048.0) * v2;
  vColor = color; vPos = 3.0 * corner;
  gl_Position = vec4(p.x / viewport.x * 2.0 - 1.0, 1.0 - p.y / viewport.y * 2.0, 0.0, 1.0);
}`;
  const FS = `#version 300 es
precision highp float;
in vec4 vColor; in vec2 vPos; out vec4 frag;
void main() {
  float r2 = dot(vPos, vPos);
  if (r2 > 9.0) discard;
  float a = min(0.99, vColor.a * exp(-0.5 * r2));
  if (a < 1.0 / 255.0) discard;
  frag = vec4(vColor.rgb * a, a);
}`;

  function shader(gl, type, src) {
    const s = gl.createShader(type);
    gl.shaderSource(s, src); gl.compileShader(s);
    if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
    return s;
  }

  function Viewer(el) {
    this.el = el;
    this.gl_canvas = el.querySelector("canvas.gl");
    this.overlay = el.querySelector("canvas.overlay");
    this.status = el.querySelector(".viewer-status");
    this.form = document.getElementById("decision");
    this.base = JSON.parse(el.dataset.placement || "{}");
    this.editable = el.dataset.editable === "yes" && this.base.translation;
    this.delta = { t: [0, 0, 0], q: [1, 0, 0, 0], s: 1 };
    this.drag = null;
    this.dirty = true;
  }

  Viewer.prototype.init = async function () {
    const gl = this.gl_canvas.getContext("webgl2", { premultipliedAlpha: true, antialias: false });
    if (!gl) { this.status.textContent = "WebGL2 is not available in this browser"; return; }
    this.gl = gl;
    const prog = gl.createProgram();
    gl.attachShader(prog, shader(gl, gl.VERTEX_SHADER, VS));
    gl.attachShader(prog, shader(gl, gl.FRAGMENT_SHADER, FS));
    gl.linkProgram(prog);
    if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(prog));
    this.prog = prog;
    const res = await fetch(this.el.dataset.src, { credentials: "same-origin" });
    if (!res.ok) { this.status.textContent = "could not load the splats (" + res.status + ")"; return; }
    const buf = await res.arrayBuffer();
    const dv = new DataView(buf);
    const nScene = dv.getUint32(0, true), nAsset = dv.getUint32(4, true);
    const f = i => dv.getFloat32(8 + 4 * i, true);
    this.centre = [f(0), f(1), f(2)]; this.diag = f(3) || 1; this.up = unit([f(4), f(5), f(6)]);
    const rows = new Float32Array(buf, 36, (nScene + nAsset) * 14);
    this.scene = rows.subarray(0, nScene * 14);
    this.asset = rows.subarray(nScene * 14);
    this.nScene = nScene; this.nAsset = nAsset;
    this.sceneCov = covariances(this.scene, nScene, null, 1);
    this.target = this.editable ? this.base.translation.slice() : this.centre.slice();
    this.dist = 2.2 * this.diag + 0.5; this.az = 0.6; this.el_ = 0.45;
    // a horizontal direction to start from: away from the scene's centre of mass when it is off-centre
    const e1 = unit(Math.abs(this.up[0]) < 0.9 ? cross(this.up, [1, 0, 0]) : cross(this.up, [0, 1, 0]));
    this.e1 = e1; this.e2 = cross(this.up, e1);
    this.setupBuffers();
    this.bindEvents();
    this.readFields();
    this.status.textContent = nScene + " scene + " + nAsset + " asset Gaussians";
    const loop = () => { if (this.dirty) { this.draw(); this.dirty = false; } requestAnimationFrame(loop); };
    requestAnimationFrame(loop);
  };

  function covariances(rows, n, rot, scale) {  // [n*6]: xx xy xz yy yz zz of R S S R^T (rot: extra 3x3)
    const out = new Float32Array(n * 6);
    for (let i = 0; i < n; i++) {
      const o = i * 14;
      let m = qmat([rows[o + 6], rows[o + 7], rows[o + 8], rows[o + 9]]);
      if (rot) m = matmul(rot, m);
      const s = [rows[o + 3] * scale, rows[o + 4] * scale, rows[o + 5] * scale];
      const M = [m[0] * s[0], m[1] * s[1], m[2] * s[2], m[3] * s[0], m[4] * s[1], m[5] * s[2],
                 m[6] * s[0], m[7] * s[1], m[8] * s[2]];
      out[i * 6] = M[0] * M[0] + M[1] * M[1] + M[2] * M[2];
      out[i * 6 + 1] = M[0] * M[3] + M[1] * M[4] + M[2] * M[5];
      out[i * 6 + 2] = M[0] * M[6] + M[1] * M[7] + M[2] * M[8];
      out[i * 6 + 3] = M[3] * M[3] + M[4] * M[4] + M[5] * M[5];
      out[i * 6 + 4] = M[3] * M[6] + M[4] * M[7] + M[5] * M[8];
      out[i * 6 + 5] = M[6] * M[6] + M[7] * M[7] + M[8] * M[8];
    }
    return out;
  }
  function matmul(a, b) {
    const o = new Array(9);
    for (let r = 0; r < 3; r++) for (let c = 0; c < 3; c++)
      o[r * 3 + c] = a[r * 3] * b[c] + a[r * 3 + 1] * b[3 + c] + a[r * 3 + 2] * b[6 + c];
    return o;
  }

  Viewer.prototype.setupBuffers = function () {
    const gl = this.gl, prog = this.prog;
    this.vao = gl.createVertexArray();
    gl.bindVertexArray(this.vao);
    const quad = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, quad);
    gl.bufferData(gl.ARRAY_BUFFER, new Float32Array([-1, -1, 1, -1, -1, 1, 1, 1]), gl.STATIC_DRAW);
    const loc = n => gl.getAttribLocation(prog, n);
    gl.enableVertexAttribArray(loc("corner"));
    gl.vertexAttribPointer(loc("corner"), 2, gl.FLOAT, false, 0, 0);
    this.inst = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, this.inst);
    const stride = 13 * 4;
    [["center", 3, 0], ["covA", 3, 3], ["covB", 3, 6], ["color", 4, 9]].forEach(([name, size, off]) => {
      gl.enableVertexAttribArray(loc(name));
      gl.vertexAttribPointer(loc(name), size, gl.FLOAT, false, stride, off * 4);
      gl.vertexAttribDivisor(loc(name), 1);
    });
    this.n = this.nScene + this.nAsset;
    this.packed = new Float32Array(this.n * 13);
    this.centers = new Float32Array(this.n * 3);
    this.order = new Uint32Array(this.n);
    this.depth = new Float32Array(this.n);
  };

  Viewer.prototype.placement = function () {
    const b = this.base, d = this.delta;
    return { q: qmul(d.q, qnorm(b.rotation_wxyz || [1, 0, 0, 0])), t: add(b.translation || [0, 0, 0], d.t),
             s: (b.scale || 1) * d.s };
  };

  Viewer.prototype.camera = function () {
    const dir = add(mul(add(mul(this.e1, Math.cos(this.az)), mul(this.e2, Math.sin(this.az))), Math.cos(this.el_)),
                    mul(this.up, Math.sin(this.el_)));
    const eye = add(this.target, mul(dir, this.dist));
    const fwd = unit(sub(this.target, eye));
    const right = unit(cross(fwd, this.up));
    const down = cross(fwd, right);
    const R = [...right, ...down, ...fwd];
    const W = this.gl_canvas.width, H = this.gl_canvas.height;
    const focal = 0.5 * H / Math.tan(25 * D2R);
    return { R, T: mul(mv(R, eye), -1), eye, right, down, fwd, W, H, focal };
  };

  Viewer.prototype.project = function (cam, X) {
    const c = add(mv(cam.R, X), cam.T);
    if (c[2] < 0.05) return null;
    const dpr = cam.W / this.overlay.clientWidth;
    return [(cam.focal * c[0] / c[2] + cam.W / 2) / dpr, (cam.focal * c[1] / c[2] + cam.H / 2) / dpr];
  };

  Viewer.prototype.resize = function () {
    const dpr = Math.min(window.devicePixelRatio || 1, 2);
    for (const c of [this.gl_canvas, this.overlay]) {
      const w = Math.round(c.clientWidth * dpr), h = Math.round(c.clientHeight * dpr);
      if (c.width !== w || c.height !== h) { c.width = w; c.height = h; }
    }
  };

  Viewer.prototype.draw = function () {
    this.resize();
    const gl = this.gl, cam = this.camera(), n = this.n, P = this.packed;
    const place = this.placement(), Rp = qmat(place.q);
    const assetCov = covariances(this.asset, this.nAsset, Rp, place.s);
    for (let i = 0; i < n; i++) {
      const isAsset = i >= this.nScene, j = isAsset ? i - this.nScene : i;
      const rows = isAsset ? this.asset : this.scene, o = j * 14;
      let x = [rows[o], rows[o + 1], rows[o + 2]];
      if (isAsset) x = add(mul(mv(Rp, x), place.s), place.t);
      this.centers.set(x, i * 3);
      this.depth[i] = dot(cam.fwd, sub(x, cam.eye));
      this.order[i] = i;
    }
    const depth = this.depth;
    this.order.sort((a, b) => depth[b] - depth[a]);  // far to near
    for (let k = 0; k < n; k++) {
      const i = this.order[k], isAsset = i >= this.nScene, j = isAsset ? i - this.nScene : i;
      const rows = isAsset ? this.asset : this.scene, cov = isAsset ? assetCov : this.sceneCov;
      P.set(this.centers.subarray(i * 3, i * 3 + 3), k * 13);
      P.set(cov.subarray(j * 6, j * 6 + 6), k * 13 + 3);
      P.set(rows.subarray(j * 14 + 10, j * 14 + 14), k * 13 + 9);
    }
    gl.viewport(0, 0, cam.W, cam.H);
    gl.clearColor(0.93, 0.94, 0.96, 1);
    gl.clear(gl.COLOR_BUFFER_BIT);
    gl.disable(gl.DEPTH_TEST);
    gl.enable(gl.BLEND);
    gl.blendFunc(gl.ONE, gl.ONE_MINUS_SRC_ALPHA);
    gl.useProgram(this.prog);
    const Rcol = [cam.R[0], cam.R[3], cam.R[6], cam.R[1], cam.R[4], cam.R[7], cam.R[2], cam.R[5], cam.R[8]];
    gl.uniformMatrix3fv(gl.getUniformLocation(this.prog, "R"), false, Rcol);
    gl.uniform3fv(gl.getUniformLocation(this.prog, "T"), cam.T);
    gl.uniform2f(gl.getUniformLocation(this.prog, "focal"), cam.focal, cam.focal);
    gl.uniform2f(gl.getUniformLocation(this.prog, "viewport"), cam.W, cam.H);
    gl.bindVertexArray(this.vao);
    gl.bindBuffer(gl.ARRAY_BUFFER, this.inst);
    gl.bufferData(gl.ARRAY_BUFFER, P, gl.DYNAMIC_DRAW);
    gl.drawArraysInstanced(gl.TRIANGLE_STRIP, 0, 4, n);
    this.drawGizmo(cam, place);
    this.el.dataset.frames = String((+this.el.dataset.frames || 0) + 1);
  };

  // -- the gizmo (2D overlay) ----------------------------------------------------------------------
  const AXES = [[1, 0, 0], [0, 1, 0], [0, 0, 1]], COLOURS = ["#d33", "#2a2", "#36d"];

  Viewer.prototype.handles = function (cam, place) {
    if (!this.editable) return null;
    const c = place.t, L = 0.6 * this.diag, r = 0.42 * this.diag, h = { centre: this.project(cam, c), axes: [], rings: [] };
    if (!h.centre) return null;
    AXES.forEach((a, i) => {
      h.axes.push(this.project(cam, add(c, mul(a, L))));
      const u = unit(cross(a, Math.abs(a[0]) < 0.9 ? [1, 0, 0] : [0, 1, 0])), v = cross(a, u), pts = [];
      for (let k = 0; k <= 48; k++) {
        const t = 2 * Math.PI * k / 48;
        pts.push(this.project(cam, add(c, add(mul(u, r * Math.cos(t)), mul(v, r * Math.sin(t))))));
      }
      h.rings.push(pts);
    });
    h.L = L;
    return h;
  };

  Viewer.prototype.drawGizmo = function (cam, place) {
    const ctx = this.overlay.getContext("2d"), dpr = this.overlay.width / this.overlay.clientWidth;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, this.overlay.clientWidth, this.overlay.clientHeight);
    const h = this.handles(cam, place);
    this.h = h;
    if (!h) return;
    ctx.lineWidth = 2;
    h.rings.forEach((pts, i) => {
      ctx.strokeStyle = COLOURS[i]; ctx.globalAlpha = 0.55; ctx.beginPath();
      let pen = false;
      for (const p of pts) { if (!p) { pen = false; continue; } pen ? ctx.lineTo(p[0], p[1]) : ctx.moveTo(p[0], p[1]); pen = true; }
      ctx.stroke();
    });
    ctx.globalAlpha = 1; ctx.lineWidth = 3;
    h.axes.forEach((p, i) => {
      if (!p) return;
      ctx.strokeStyle = ctx.fillStyle = COLOURS[i];
      ctx.beginPath(); ctx.moveTo(h.centre[0], h.centre[1]); ctx.lineTo(p[0], p[1]); ctx.stroke();
      ctx.beginPath(); ctx.arc(p[0], p[1], 5, 0, 2 * Math.PI); ctx.fill();
    });
    ctx.fillStyle = "#222"; ctx.fillRect(h.centre[0] - 5, h.centre[1] - 5, 10, 10);
  };

  function segDist(p, a, b) {
    const ab = [b[0] - a[0], b[1] - a[1]], ap = [p[0] - a[0], p[1] - a[1]];
    const t = Math.max(0, Math.min(1, (ap[0] * ab[0] + ap[1] * ab[1]) / ((ab[0] ** 2 + ab[1] ** 2) || 1)));
    return Math.hypot(ap[0] - t * ab[0], ap[1] - t * ab[1]);
  }

  Viewer.prototype.pick = function (p) {
    const h = this.h;
    if (!h) return null;
    if (Math.abs(p[0] - h.centre[0]) <= 7 && Math.abs(p[1] - h.centre[1]) <= 7) return { kind: "scale" };
    for (let i = 0; i < 3; i++) if (h.axes[i] && segDist(p, h.centre, h.axes[i]) < 7) return { kind: "move", axis: i };
    for (let i = 0; i < 3; i++) {
      const pts = h.rings[i];
      for (let k = 0; k + 1 < pts.length; k++) if (pts[k] && pts[k + 1] && segDist(p, pts[k], pts[k + 1]) < 6) return { kind: "rotate", axis: i };
    }
    return null;
  };

  Viewer.prototype.bindEvents = function () {
    const ov = this.overlay;
    const pos = e => { const r = ov.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; };
    ov.addEventListener("pointerdown", e => {
      const p = pos(e);
      this.drag = { p, handle: e.shiftKey ? null : this.pick(p), shift: e.shiftKey };
      ov.setPointerCapture(e.pointerId);
    });
    ov.addEventListener("pointermove", e => {
      if (!this.drag) return;
      const p = pos(e), prev = this.drag.p, dx = p[0] - prev[0], dy = p[1] - prev[1];
      this.drag.p = p;
      const hd = this.drag.handle;
      if (!hd) {
        if (this.drag.shift) {
          const cam = this.camera(), k = this.dist / cam.focal * (cam.W / ov.clientWidth);
          this.target = sub(this.target, add(mul(cam.right, dx * k), mul(cam.down, dy * k)));
        } else {
          this.az -= dx * 0.01;
          this.el_ = Math.max(-1.45, Math.min(1.45, this.el_ + dy * 0.01));
        }
      } else if (hd.kind === "move") {
        const h = this.h, s = [h.axes[hd.axis][0] - h.centre[0], h.axes[hd.axis][1] - h.centre[1]];
        const amount = (dx * s[0] + dy * s[1]) / ((s[0] ** 2 + s[1] ** 2) || 1) * h.L;
        this.delta.t[hd.axis] += amount;
        this.writeFields();
      } else if (hd.kind === "rotate") {
        const c = this.h.centre, a = [prev[0] - c[0], prev[1] - c[1]], b = [p[0] - c[0], p[1] - c[1]];
        let ang = Math.atan2(a[0] * b[1] - a[1] * b[0], a[0] * b[0] + a[1] * b[1]);  // clockwise on screen > 0
        const cam = this.camera();
        // rotating about an axis that points away from the viewer turns things clockwise on screen
        if (dot(cam.fwd, AXES[hd.axis]) < 0) ang = -ang;
        this.delta.q = qnorm(qmul(qaxis(AXES[hd.axis], ang), this.delta.q));
        this.writeFields();
      } else if (hd.kind === "scale") {
        this.delta.s = Math.max(0.05, Math.min(20, this.delta.s * Math.exp(-dy / 150)));
        this.writeFields();
      }
      this.dirty = true;
    });
    const end = () => { this.drag = null; };
    ov.addEventListener("pointerup", end);
    ov.addEventListener("pointercancel", end);
    ov.addEventListener("wheel", e => {
      e.preventDefault();
      this.dist = Math.max(0.05 * this.diag, this.dist * Math.exp(e.deltaY * 0.001));
      this.dirty = true;
    }, { passive: false });
    window.addEventListener("resize", () => { this.dirty = true; });
    if (this.form) {
      this.form.addEventListener("input", () => { this.readFields(); this.dirty = true; });
      const reset = document.getElementById("reset-placement");
      if (reset) reset.addEventListener("click", () => {
        this.delta = { t: [0, 0, 0], q: [1, 0, 0, 0], s: 1 };
        this.writeFields(); this.dirty = true;
      });
    }
  };

  Viewer.prototype.field = function (name) { return this.form ? this.form.elements.namedItem(name) : null; };

  Viewer.prototype.readFields = function () {
    if (!this.field("dx")) return;
    const v = n => { const x = parseFloat(this.field(n).value); return Number.isFinite(x) ? x : 0; };
    this.delta.t = [v("dx"), v("dy"), v("dz")];
    this.delta.q = eulerQuat(v("rx"), v("ry"), v("rz"));
    const s = parseFloat(this.field("scale").value);
    this.delta.s = Number.isFinite(s) && s > 0 ? s : 1;
  };

  Viewer.prototype.writeFields = function () {
    if (!this.field("dx")) return;
    const e = quatEuler(this.delta.q);
    [["dx", this.delta.t[0], 3], ["dy", this.delta.t[1], 3], ["dz", this.delta.t[2], 3],
     ["rx", e[0], 1], ["ry", e[1], 1], ["rz", e[2], 1], ["scale", this.delta.s, 3]].forEach(([n, x, d]) => {
      this.field(n).value = (Math.round(x * 10 ** d) / 10 ** d).toString();
    });
  };

  function start() {
    const el = document.getElementById("viewer");
    if (!el) return;
    const v = new Viewer(el);
    window.iduViewer = v;
    v.init().then(() => { el.dataset.ready = "1"; }).catch(err => {
      el.querySelector(".viewer-status").textContent = "3D view failed: " + err.message;
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();
