"""OpenGL presentation: the latest frame in one persistent texture, letterboxed to the target, HUD on top.

`Display` draws into the window's default framebuffer (interactive: the context pygame created) or into an
offscreen framebuffer of a standalone context (headless). Only the UI thread may call it.
"""
from __future__ import annotations

import moderngl
import numpy as np

_VERTEX = """
#version 330
in vec2 in_pos;
uniform vec4 u_rect;   // centre x, centre y, half width, half height in NDC
out vec2 v_uv;
void main() {
    // in_pos spans [-1, 1]; texture rows are uploaded top row first, so v = 0 is the top of the image.
    v_uv = vec2(in_pos.x * 0.5 + 0.5, 0.5 - in_pos.y * 0.5);
    gl_Position = vec4(u_rect.xy + in_pos * u_rect.zw, 0.0, 1.0);
}
"""

_FRAGMENT = """
#version 330
uniform sampler2D u_tex;
in vec2 v_uv;
out vec4 f_color;
void main() {
    f_color = texture(u_tex, v_uv);
}
"""


def letterbox(frame_wh: tuple[int, int], target_wh: tuple[int, int]) -> tuple[int, int, int, int]:
    """Largest rectangle of the frame's aspect that fits the target, centred: (x, y, w, h) in pixels, y down."""
    fw, fh = frame_wh
    tw, th = target_wh
    if fw <= 0 or fh <= 0 or tw <= 0 or th <= 0:
        return 0, 0, max(tw, 0), max(th, 0)
    scale = min(tw / fw, th / fh)
    w, h = max(1, round(fw * scale)), max(1, round(fh * scale))
    return (tw - w) // 2, (th - h) // 2, w, h


def _ndc_rect(x: int, y: int, w: int, h: int, tw: int, th: int) -> tuple[float, float, float, float]:
    """Pixel rectangle (y down) -> (centre x, centre y, half width, half height) in NDC (y up)."""
    return ((x + w / 2) / tw * 2 - 1, 1 - (y + h / 2) / th * 2, w / tw, h / th)


class Display:
    """Frame + HUD renderer.

    Args:
        ctx: a moderngl context (window or standalone).
        size: (width, height) of the target in pixels.
        offscreen: draw into an own framebuffer of `size` (headless) instead of the default framebuffer.
    """

    def __init__(self, ctx, size: tuple[int, int], *, offscreen: bool = False):
        self.ctx = ctx
        self.offscreen = offscreen
        self._prog = ctx.program(vertex_shader=_VERTEX, fragment_shader=_FRAGMENT)
        quad = np.array([-1, -1, 1, -1, -1, 1, 1, 1], dtype="f4")
        self._vbo = ctx.buffer(quad.tobytes())
        self._vao = ctx.vertex_array(self._prog, [(self._vbo, "2f", "in_pos")])
        self._prog["u_tex"].value = 0
        self.frame_tex = None
        self.hud_tex = None
        self.hud_pos = (0, 0)
        self.fbo = None
        self.size = (0, 0)
        self.resize(size)

    # ---- targets --------------------------------------------------------------------------------------------
    def resize(self, size: tuple[int, int]) -> None:
        w, h = max(1, int(size[0])), max(1, int(size[1]))
        if (w, h) == self.size:
            return
        self.size = (w, h)
        if self.offscreen:
            if self.fbo is not None:
                self.fbo.release()
            self.fbo = self.ctx.simple_framebuffer((w, h), components=4)
        else:
            self.fbo = self.ctx.screen

    # ---- uploads ---------------------------------------------------------------------------------------------
    def upload_frame(self, frame: np.ndarray) -> None:
        """Write uint8 [H, W, 3] into the persistent frame texture (reallocated only on a size change)."""
        frame = np.ascontiguousarray(frame, dtype=np.uint8)
        h, w = frame.shape[:2]
        if self.frame_tex is None or self.frame_tex.size != (w, h):
            if self.frame_tex is not None:
                self.frame_tex.release()
            self.frame_tex = self.ctx.texture((w, h), 3, alignment=1)
            self.frame_tex.filter = (moderngl.LINEAR, moderngl.LINEAR)
            self.frame_tex.repeat_x = self.frame_tex.repeat_y = False
        self.frame_tex.write(frame)

    def upload_hud(self, rgba: bytes | None, size: tuple[int, int] = (0, 0), pos: tuple[int, int] = (0, 0)) -> None:
        """The HUD overlay: RGBA bytes (straight alpha, top row first) of `size`, drawn at pixel `pos`."""
        if rgba is None:
            if self.hud_tex is not None:
                self.hud_tex.release()
                self.hud_tex = None
            return
        if self.hud_tex is None or self.hud_tex.size != tuple(size):
            if self.hud_tex is not None:
                self.hud_tex.release()
            self.hud_tex = self.ctx.texture(tuple(size), 4, alignment=1)
            self.hud_tex.filter = (moderngl.NEAREST, moderngl.NEAREST)
        self.hud_tex.write(rgba)
        self.hud_pos = tuple(pos)

    # ---- drawing ---------------------------------------------------------------------------------------------
    def frame_rect(self) -> tuple[int, int, int, int]:
        """Where the frame lands in the target: (x, y, w, h) in pixels, y down."""
        if self.frame_tex is None:
            return 0, 0, 0, 0
        return letterbox(self.frame_tex.size, self.size)

    def draw(self, hud: bool = True) -> None:
        tw, th = self.size
        self.fbo.use()
        self.ctx.viewport = (0, 0, tw, th)
        self.ctx.clear(0.0, 0.0, 0.0, 1.0)
        if self.frame_tex is not None:
            self.ctx.disable(moderngl.BLEND)
            self._prog["u_rect"].value = _ndc_rect(*self.frame_rect(), tw, th)
            self.frame_tex.use(0)
            self._vao.render(moderngl.TRIANGLE_STRIP)
        if hud and self.hud_tex is not None:
            self.ctx.enable(moderngl.BLEND)
            self.ctx.blend_func = moderngl.SRC_ALPHA, moderngl.ONE_MINUS_SRC_ALPHA
            hw, hh = self.hud_tex.size
            self._prog["u_rect"].value = _ndc_rect(self.hud_pos[0], self.hud_pos[1], hw, hh, tw, th)
            self.hud_tex.use(0)
            self._vao.render(moderngl.TRIANGLE_STRIP)
            self.ctx.disable(moderngl.BLEND)

    def read(self) -> np.ndarray:
        """The target's pixels as uint8 [h, w, 3], top row first (call after `draw`, before a buffer swap)."""
        tw, th = self.size
        data = self.fbo.read(viewport=(0, 0, tw, th), components=3, alignment=1)
        return np.frombuffer(data, dtype=np.uint8).reshape(th, tw, 3)[::-1].copy()

    def release(self) -> None:
        for obj in (self.frame_tex, self.hud_tex, self._vao, self._vbo, self._prog):
            if obj is not None:
                obj.release()
        if self.offscreen and self.fbo is not None:
            self.fbo.release()
        self.frame_tex = self.hud_tex = None
