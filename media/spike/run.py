"""Spike harness.

  python run.py server --mode sfu|relay --port 8765      # the forwarding process (CPU measured here)
  python run.py clients --port 8765 --subs 2 --seconds 10 # publisher + N decoding subscribers
"""

import argparse
import asyncio
import json
import logging
import os
import sys
import time

import aiohttp
import av
from aiohttp import web
from aiortc import AudioStreamTrack, RTCPeerConnection, RTCRtpSender, RTCSessionDescription, VideoStreamTrack
from aiortc.contrib.media import MediaRelay

sys.path.insert(0, os.path.dirname(__file__))
from sfu import Forwarder  # noqa: E402

import random

from aiortc.rtp import is_rtcp


def make_lossy(transport, loss):
    """Drop a fraction of outgoing RTP (not RTCP) packets on this DTLS transport."""
    if not loss:
        return
    orig = transport._send_rtp
    stats = transport._lossy = {"dropped": 0}

    async def lossy(data):
        if not is_rtcp(data) and random.random() < loss:
            stats["dropped"] += 1
            return
        await orig(data)

    transport._send_rtp = lossy


W, H = 640, 480
BITS = 16
COLW = W // BITS


# ---------------------------------------------------------------- server
def server_main(args):
    pcs = set()
    state = {"fwd": {}, "tracks": {}, "relay": MediaRelay(), "t0": None}

    async def publish(request):
        params = await request.json()
        pc = RTCPeerConnection()
        pcs.add(pc)

        @pc.on("track")
        def on_track(track):
            if args.mode == "sfu":
                receiver = next(t.receiver for t in pc.getTransceivers() if t.receiver.track is track)
                state["fwd"][track.kind] = Forwarder(receiver, track.kind)
            else:
                state["tracks"][track.kind] = track

        await pc.setRemoteDescription(RTCSessionDescription(**params))
        await pc.setLocalDescription(await pc.createAnswer())
        return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type})

    async def subscribe(request):
        params = await request.json()
        pc = RTCPeerConnection()
        pcs.add(pc)
        offer = RTCSessionDescription(**params)
        kinds = [k for k in ("audio", "video") if f"m={k} " in offer.sdp]
        if args.mode == "sfu":
            for kind in kinds:
                if kind in state["fwd"]:
                    state["fwd"][kind].subscribe(pc)
        await pc.setRemoteDescription(offer)
        make_lossy(pc.getTransceivers()[0].sender.transport, float(os.environ.get("SFU_DOWN_LOSS", 0)))
        for kind in kinds:
            if args.mode != "sfu" and kind in state["tracks"]:
                pc.addTrack(state["relay"].subscribe(state["tracks"][kind], buffered=False))
        await pc.setLocalDescription(await pc.createAnswer())
        return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type})

    async def stats_start(request):
        state["t0"] = (time.process_time(), time.monotonic())
        return web.json_response({})

    async def stats_stop(request):
        cpu0, wall0 = state["t0"]
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        out = {"cpu_s": cpu, "wall_s": wall, "cpu_pct": 100 * cpu / wall}
        f = state["fwd"].get("video")
        if f:
            a = state["fwd"].get("audio")
            if a:
                out.update(audio_frames_in=a.frames_in)
            out.update(frames_in=f.frames_in, keyframes_in=f.keyframes_in, plis_sent=f.plis_sent,
                       subs=len(f.subscribers), dropped=[s.dropped for s in f.subscribers])
        return web.json_response(out)

    async def on_shutdown(app):
        await asyncio.gather(*[pc.close() for pc in pcs])

    app = web.Application()
    app.router.add_post("/publish", publish)
    app.router.add_post("/subscribe", subscribe)
    app.router.add_post("/stats/start", stats_start)
    app.router.add_post("/stats/stop", stats_stop)
    app.on_shutdown.append(on_shutdown)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None)


# ---------------------------------------------------------------- clients
SENT = {}


class CounterTrack(VideoStreamTrack):
    """640x480 VP8 source: top half = 16-bit counter as black/white columns, bottom = moving noise."""

    def __init__(self):
        super().__init__()
        self.n = 0
        self.noise = os.urandom(W * (H // 2) * 2)
        self.chroma = bytes([128]) * (W // 2 * H // 2)

    async def recv(self):
        pts, tb = await self.next_timestamp()
        row = b"".join((b"\xeb" if (self.n >> (BITS - 1 - c)) & 1 else b"\x10") * COLW for c in range(BITS))
        off = (self.n * W * 3) % (W * H // 2)
        y = row * (H // 2) + self.noise[off: off + W * H // 2]
        f = av.VideoFrame(W, H, "yuv420p")
        assert f.planes[0].line_size == W
        f.planes[0].update(y)
        f.planes[1].update(self.chroma)
        f.planes[2].update(self.chroma)
        f.pts, f.time_base = pts, tb
        SENT[self.n] = time.monotonic()
        self.n += 1
        return f


def read_counter(frame) -> int:
    p = frame.planes[0]
    buf = bytes(p)
    base = (H // 4) * p.line_size
    n = 0
    for c in range(BITS):
        n = (n << 1) | (1 if buf[base + c * COLW + COLW // 2] > 128 else 0)
    return n


class Sub:
    def __init__(self, name, audio=False):
        self.levels = []
        self.name = name
        self.pc = RTCPeerConnection()
        self.pc.addTransceiver("video", direction="recvonly")
        self.audio = []
        if audio:
            self.pc.addTransceiver("audio", direction="recvonly")
        self.values = []  # (monotonic, counter)
        self.t_created = time.monotonic()
        self.pc.on("track", self.on_track)

    def on_track(self, t):
        if t.kind == "audio":
            from aiortc.jitterbuffer import JitterBuffer
            levels = self.levels

            class RecJB(JitterBuffer):
                def add(self, packet):
                    levels.append(packet.extensions.audio_level)
                    return super().add(packet)

            rcv = next(x.receiver for x in self.pc.getTransceivers() if x.receiver.track is t)
            rcv._RTCRtpReceiver__jitter_buffer = RecJB(capacity=16, prefetch=4)
        asyncio.ensure_future(self.consume(t))

    async def consume(self, track):
        while True:
            try:
                frame = await track.recv()
            except Exception:
                return
            if track.kind == "audio" and not getattr(self, "_jb_patched", False):
                self._jb_patched = True
            if track.kind == "audio":
                self.audio.append((time.monotonic(), frame.pts, frame.samples))
                continue
            self.values.append((time.monotonic(), read_counter(frame)))

    def window(self, t0, t1):
        vals = [v for t, v in self.values if t0 <= t < t1]
        lat = sorted(t - SENT[v] for t, v in self.values if t0 <= t < t1 and v in SENT)
        p = lambda q: round(1000 * lat[int(q * (len(lat) - 1))], 1) if lat else None
        back = sum(1 for a, b in zip(vals, vals[1:]) if b <= a)
        gaps = sum(b - a - 1 for a, b in zip(vals, vals[1:]) if b > a + 1)
        au = [a for a in self.audio if t0 <= a[0] < t1]
        lv = [x for x in self.levels if x is not None]
        return {"audio_levels_seen": len(lv), "audio_level_sample": lv[-1] if lv else None, "audio_frames_per_s": round(len(au) / (t1 - t0), 1), "frames": len(vals), "latency_ms_p50": p(0.5), "latency_ms_p95": p(0.95), "fps": round(len(vals) / (t1 - t0), 1), "non_increasing": back,
                "missing_counters": gaps, "first": vals[0] if vals else None, "last": vals[-1] if vals else None}


async def negotiate(session, url, pc):
    await pc.setLocalDescription(await pc.createOffer())
    async with session.post(url, json={"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}) as r:
        ans = await r.json()
    await pc.setRemoteDescription(RTCSessionDescription(**ans))


async def clients_main(args):
    base = f"http://127.0.0.1:{args.port}"
    res = {"subs": args.subs, "seconds": args.seconds}
    async with aiohttp.ClientSession() as s:
        pub = RTCPeerConnection()
        src = CounterTrack()
        sender = pub.addTrack(src)
        if args.audio:
            pub.addTrack(AudioStreamTrack())
        for t in pub.getTransceivers():
            if t.kind == "video":
                caps = RTCRtpSender.getCapabilities("video").codecs
                t.setCodecPreferences([c for c in caps if c.mimeType.lower() in ("video/" + args.codec.lower(), "video/rtx")])
        plis = {"n": 0}
        orig = sender._send_keyframe

        def counting_keyframe():
            plis["n"] += 1
            orig()

        sender._send_keyframe = counting_keyframe
        await negotiate(s, base + "/publish", pub)
        make_lossy(sender.transport, args.loss)
        await asyncio.sleep(1.0)
        subs = []
        for i in range(args.subs):
            sub = Sub(f"s{i}", args.audio)
            await negotiate(s, base + "/subscribe", sub.pc)
            subs.append(sub)
        await asyncio.sleep(3.0)  # warm-up (ICE/DTLS, first keyframe, REMB ramp)
        await s.post(base + "/stats/start")
        t0 = time.monotonic()
        cpu0 = time.process_time()
        await asyncio.sleep(args.seconds)
        t1 = time.monotonic()
        async with s.post(base + "/stats/stop") as r:
            res["server"] = await r.json()
        res["clients_cpu_pct"] = round(100 * (time.process_time() - cpu0) / (t1 - t0), 1)
        res["publisher_frames_sent"] = src.n
        res["subscribers"] = {x.name: x.window(t0, t1) for x in subs}
        stats = await sender.getStats()
        for st in stats.values():
            if st.type == "outbound-rtp" and st.kind == "video":
                res["publisher_bytes_sent"] = st.bytesSent
        res["publisher_plis_received_before_tests"] = plis["n"]
        res["uplink_dropped"] = getattr(sender.transport, "_lossy", {}).get("dropped")

        if args.extra:
            # late joiner: time to first decoded frame
            late = Sub("late")
            tj = time.monotonic()
            await negotiate(s, base + "/subscribe", late.pc)
            tn = time.monotonic()
            for _ in range(60):
                await asyncio.sleep(0.05)
                if late.values:
                    break
            res["late_joiner_first_frame_s"] = round(late.values[0][0] - tj, 3) if late.values else None
            res["late_joiner_first_frame_after_signaling_s"] = round(late.values[0][0] - tn, 3) if late.values else None
            # subscriber PLI -> publisher
            before = plis["n"]
            rcv = subs[0].pc.getReceivers()[0]
            ssrc = rcv.getSynchronizationSources()[0].source
            await rcv._send_rtcp_pli(ssrc)
            await asyncio.sleep(1.0)
            res["subscriber_pli_reached_publisher"] = plis["n"] - before
            subs.append(late)
        await asyncio.gather(*[x.pc.close() for x in subs], pub.close())
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=["server", "clients"])
    ap.add_argument("--mode", default="sfu")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--subs", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--extra", action="store_true")
    ap.add_argument("--audio", action="store_true")
    ap.add_argument("--loss", type=float, default=0.0)
    ap.add_argument("--codec", default="VP8")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.role == "server":
        server_main(args)
    else:
        asyncio.run(clients_main(args))
