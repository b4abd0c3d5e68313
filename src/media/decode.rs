//! Video decoding through FFmpeg (ffmpeg-sys-next), wrapped in a safe API.
//!
//! The reference is one forward pass: packets are demuxed and decoded in order, frames are
//! numbered in presentation order as the decoder returns them, and only the sampled ones are
//! converted to RGB24 (at the source size) and kept. Decoding stops after the last sampled frame.
//!
//! Decoding every frame up to the last sampled one is most of the cost when frames are sparse
//! (a few frames from a long video). The indexed path first demuxes the packets without
//! decoding them (a [`StreamIndex`]: pts, position, keyframe and reference flags of every
//! packet, hence the presentation order and the exact frame count), plans decode runs that
//! start at the latest keyframe from which each wanted frame decodes exactly
//! ([`super::seek`]), and decodes the runs on separate threads, each with its own demuxer and
//! decoder, leaving out unwanted frames that nothing references. Every packet read after a
//! seek is checked against the index and every returned frame's pts against the presentation
//! order; any surprise (a missing or extra frame, a seek that lands elsewhere, a decoding
//! error) abandons the indexed path for the forward pass, so the frames are the forward
//! pass's, byte for byte, either way. Codecs and streams where the index might number frames
//! differently from the decoder are decoded forward from the start.
//!
//! The RGB conversion mirrors what decord (the reference reader) does through its
//! `scale=W:H` filter graph: swscale with bilinear flags and the frame's own colour matrix and
//! range (unspecified means BT.601, limited range).

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::path::Path;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use ffmpeg_sys_next as ff;

use super::seek::{PacketEntry, Segment, StreamIndex, MIN_SKIP, NOPTS};
use super::{ffmpeg_guard, Frames, VideoInfo};
use crate::{Error, Result};

fn av_err(code: i32) -> String {
    let mut buf = [0 as std::ffi::c_char; 256];
    // SAFETY: the buffer is valid for its length and av_strerror NUL-terminates it.
    unsafe {
        ff::av_strerror(code, buf.as_mut_ptr(), buf.len());
        ffmpeg_guard::explain(CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned())
    }
}

fn quiet_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: sets a global log level; no pointers involved. Our errors carry FFmpeg's message.
    ONCE.call_once(|| unsafe { ff::av_log_set_level(ff::AV_LOG_FATAL) });
}

/// An opened container with its best video stream.
struct Input {
    fmt: *mut ff::AVFormatContext,
    stream: i32,
}

impl Drop for Input {
    fn drop(&mut self) {
        // SAFETY: fmt came from avformat_open_input and is closed once.
        unsafe { ff::avformat_close_input(&mut self.fmt) }
    }
}

impl Input {
    fn open(path: &Path) -> Result<Input, String> {
        let mut input = Input::open_demuxer(path)?;
        // SAFETY: fmt is an open context.
        let ret = unsafe { ff::avformat_find_stream_info(input.fmt, ptr::null_mut()) };
        if ret < 0 {
            return Err(format!("cannot read stream info: {}", av_err(ret)));
        }
        // SAFETY: as above; no decoder is requested.
        let st = unsafe {
            ff::av_find_best_stream(
                input.fmt,
                ff::AVMediaType::AVMEDIA_TYPE_VIDEO,
                -1,
                -1,
                ptr::null_mut(),
                0,
            )
        };
        if st < 0 {
            return Err("no video stream in file".into());
        }
        input.select(st);
        Ok(input)
    }

    /// Opens the container only (no stream probing): for the seeking path's extra readers,
    /// which take the stream and codec parameters from the first open.
    fn open_demuxer(path: &Path) -> Result<Input, String> {
        quiet_logs();
        if !path.exists() {
            return Err("file not found".into());
        }
        if path.is_dir() {
            return Err("is a directory, not a video file".into());
        }
        let c = path_cstring(path)?;
        let mut fmt = ffmpeg_guard::format_context()?;
        // SAFETY: valid C string; fmt is an out pointer that FFmpeg fills (or frees on failure).
        let ret =
            unsafe { ff::avformat_open_input(&mut fmt, c.as_ptr(), ptr::null(), ptr::null_mut()) };
        if ret < 0 {
            return Err(format!("cannot open as a video: {}", av_err(ret)));
        }
        Ok(Input { fmt, stream: -1 })
    }

    /// Reads packets of stream `st` only: the demuxer skips the others (audio, subtitles).
    fn select(&mut self, st: i32) {
        self.stream = st;
        // SAFETY: the stream array has nb_streams entries owned by the open context.
        unsafe {
            for i in 0..(*self.fmt).nb_streams as i32 {
                if i != st {
                    (**(*self.fmt).streams.add(i as usize)).discard = ff::AVDiscard::AVDISCARD_ALL;
                }
            }
        }
    }

    /// Reads the next packet of the video stream into `pkt`; false at the end of the file.
    fn read_video(&mut self, pkt: &Packet) -> Result<bool, String> {
        loop {
            ffmpeg_guard::check()?;
            // SAFETY: open context and allocated packet.
            let ret = unsafe { ff::av_read_frame(self.fmt, pkt.0) };
            if ret == ff::AVERROR_EOF {
                return Ok(false);
            }
            if ret < 0 {
                return Err(format!("cannot read packets: {}", av_err(ret)));
            }
            // SAFETY: av_read_frame filled the packet.
            unsafe {
                if (*pkt.0).stream_index == self.stream {
                    return Ok(true);
                }
                ff::av_packet_unref(pkt.0);
            }
        }
    }

    /// Demuxes every packet of the video stream (no decoding) into a [`StreamIndex`]; H.264
    /// packets are also parsed for their reference flag.
    fn index(&mut self) -> Result<StreamIndex, String> {
        let pkt = Packet::new()?;
        let par = self.codecpar();
        let h264 = par.codec_id == ff::AVCodecID::AV_CODEC_ID_H264;
        // avcC extradata (version 1) gives the NAL length size; otherwise Annex B start codes.
        // SAFETY: extradata holds extradata_size bytes when non-null.
        let extra = unsafe {
            if par.extradata.is_null() || par.extradata_size <= 0 {
                &[][..]
            } else {
                std::slice::from_raw_parts(par.extradata, par.extradata_size as usize)
            }
        };
        let nal_len = (extra.len() >= 7 && extra[0] == 1).then(|| (extra[4] & 3) as usize + 1);
        let mut packets = Vec::new();
        while self.read_video(&pkt)? {
            let mut e = pkt.entry();
            if h264 {
                // SAFETY: a filled packet holds `size` bytes at `data`.
                let data = unsafe {
                    let p = &*pkt.0;
                    if p.data.is_null() || p.size <= 0 {
                        &[][..]
                    } else {
                        std::slice::from_raw_parts(p.data, p.size as usize)
                    }
                };
                e.disposable = super::seek::h264_disposable(data, nal_len);
            }
            packets.push(e);
            // SAFETY: releases the packet's data.
            unsafe { ff::av_packet_unref(pkt.0) };
        }
        Ok(StreamIndex::new(packets))
    }

    /// Positions the reader so that the next packet it returns is packet `s` of `ix` (read into
    /// `pkt`). Seeks by timestamp, then demuxes forward; `fresh` says nothing was read yet.
    fn position(
        &mut self,
        ix: &StreamIndex,
        lookup: &HashMap<(i64, i64, i32), usize>,
        s: usize,
        fresh: bool,
        pkt: &Packet,
    ) -> Result<(), String> {
        if !(s == 0 && fresh) {
            let p = &ix.packets[s];
            // mov indexes samples by dts, matroska by pts; BACKWARD lands at or before either.
            let ts = if p.dts != NOPTS {
                p.dts.min(p.pts)
            } else {
                p.pts
            };
            // SAFETY: open context, valid stream index.
            let ret =
                unsafe { ff::av_seek_frame(self.fmt, self.stream, ts, ff::AVSEEK_FLAG_BACKWARD) };
            if ret < 0 {
                return Err(format!("seek to packet {s} failed: {}", av_err(ret)));
            }
        }
        loop {
            if !self.read_video(pkt)? {
                return Err(format!("end of file before packet {s} after a seek"));
            }
            match lookup.get(&pkt.entry().identity()) {
                Some(&q) if q < s => {
                    // SAFETY: releases the packet's data.
                    unsafe { ff::av_packet_unref(pkt.0) };
                }
                Some(&q) if q == s => return Ok(()),
                _ => return Err(format!("a seek to packet {s} landed past it")),
            }
        }
    }

    fn stream(&self) -> &ff::AVStream {
        // SAFETY: stream is a valid index into the context's stream array for its lifetime.
        unsafe { &**(*self.fmt).streams.add(self.stream as usize) }
    }

    fn codecpar(&self) -> &ff::AVCodecParameters {
        // SAFETY: every stream has codec parameters.
        unsafe { &*self.stream().codecpar }
    }

    /// Counts the packets of the video stream (demuxing only), as decord indexes a file.
    fn count_packets(&mut self) -> Result<u64, String> {
        let pkt = Packet::new()?;
        let mut n = 0u64;
        while self.read_video(&pkt)? {
            n += 1;
            // SAFETY: releases the packet's data.
            unsafe { ff::av_packet_unref(pkt.0) };
        }
        Ok(n)
    }

    /// Display rotation in degrees clockwise, as decord reads it: the stream's `rotate` tag,
    /// else the negated angle of its display matrix, taken modulo 360.
    fn rotation(&self) -> u32 {
        let st = self.stream();
        let mut theta = 0f64;
        // SAFETY: stream metadata and side data belong to the open context; the key is a C string.
        unsafe {
            let e = ff::av_dict_get(st.metadata, c"rotate".as_ptr(), ptr::null(), 0);
            if !e.is_null() && !(*e).value.is_null() {
                let v = CStr::from_ptr((*e).value).to_string_lossy();
                if v != "0" && !v.is_empty() {
                    theta = v.trim().parse::<f64>().unwrap_or(0.0);
                }
            }
            if theta == 0.0 {
                let m = ff::av_stream_get_side_data(
                    st,
                    ff::AVPacketSideDataType::AV_PKT_DATA_DISPLAYMATRIX,
                    ptr::null_mut(),
                );
                if !m.is_null() {
                    theta = -ff::av_display_rotation_get(m as *const i32);
                }
            }
        }
        let theta = theta % 360.0;
        let theta = if theta < 0.0 { theta + 360.0 } else { theta };
        // decord truncates to int and only acts on exact right angles.
        match theta as i64 {
            90 => 90,
            180 => 180,
            270 => 270,
            _ => 0,
        }
    }

    /// The stream's properties; a stream without nb_frames is counted (`packets` when already
    /// known, else by a demux pass that consumes the input).
    fn info(&mut self, packets: Option<u64>) -> Result<VideoInfo, String> {
        let st = self.stream();
        let par = self.codecpar();
        let q = |r: ff::AVRational| {
            if r.num > 0 && r.den > 0 {
                Some(r.num as f64 / r.den as f64)
            } else {
                None
            }
        };
        let tb = q(st.time_base);
        let mut duration = match (st.duration, tb) {
            (d, Some(tb)) if d != i64::MIN && d > 0 => d as f64 * tb,
            _ => {
                // SAFETY: open context.
                let d = unsafe { (*self.fmt).duration };
                if d != i64::MIN && d > 0 {
                    d as f64 / ff::AV_TIME_BASE as f64
                } else {
                    0.0
                }
            }
        };
        let nb = st.nb_frames;
        let mut fps = q(st.avg_frame_rate).or(q(st.r_frame_rate)).unwrap_or(0.0);
        // SAFETY: avcodec_get_name returns a static string (or "unknown_codec").
        let codec = unsafe { CStr::from_ptr(ff::avcodec_get_name(par.codec_id)) }
            .to_string_lossy()
            .into_owned();
        let (width, height) = (par.width, par.height);
        if width <= 0 || height <= 0 {
            return Err(format!("video stream ({codec}) has no frame size"));
        }
        let mut frames = if nb > 0 { nb as u64 } else { 0 };
        if frames == 0 {
            frames = match packets {
                Some(n) => n,
                None => self.count_packets()?,
            };
        }
        if frames == 0 && fps > 0.0 && duration > 0.0 {
            frames = (duration * fps).round() as u64;
        }
        if fps == 0.0 && frames > 0 && duration > 0.0 {
            fps = frames as f64 / duration;
        }
        if duration == 0.0 && fps > 0.0 {
            duration = frames as f64 / fps;
        }
        if frames == 0 {
            return Err(format!("video stream ({codec}) has no frames"));
        }
        if !(fps > 0.0 && fps.is_finite()) {
            return Err(format!("video stream ({codec}) has no usable frame rate"));
        }
        let rotation = self.rotation();
        let (width, height) = if rotation % 180 == 90 {
            (height, width)
        } else {
            (width, height)
        };
        Ok(VideoInfo {
            frames,
            fps,
            duration,
            width: width as u32,
            height: height as u32,
            rotation,
            codec,
        })
    }
}

#[cfg(unix)]
fn path_cstring(path: &Path) -> Result<CString, String> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes()).map_err(|_| "path contains a NUL byte".to_string())
}

#[cfg(not(unix))]
fn path_cstring(path: &Path) -> Result<CString, String> {
    let s = path
        .to_str()
        .ok_or_else(|| "path is not valid UTF-8".to_string())?;
    CString::new(s).map_err(|_| "path contains a NUL byte".to_string())
}

struct Packet(*mut ff::AVPacket);

impl Packet {
    fn new() -> Result<Packet, String> {
        // SAFETY: plain allocation.
        let p = unsafe { ff::av_packet_alloc() };
        if p.is_null() {
            return Err("out of memory (packet)".into());
        }
        Ok(Packet(p))
    }

    /// What the index records of the packet just read.
    fn entry(&self) -> PacketEntry {
        // SAFETY: an allocated packet (filled by av_read_frame or blank).
        let p = unsafe { &*self.0 };
        PacketEntry {
            pts: p.pts,
            dts: p.dts,
            pos: p.pos,
            size: p.size,
            key: p.flags & ff::AV_PKT_FLAG_KEY != 0,
            discard: p.flags & ff::AV_PKT_FLAG_DISCARD != 0,
            disposable: false,
        }
    }
}

impl Drop for Packet {
    fn drop(&mut self) {
        // SAFETY: allocated by av_packet_alloc, freed once.
        unsafe { ff::av_packet_free(&mut self.0) }
    }
}

struct Frame(*mut ff::AVFrame);

impl Frame {
    fn new() -> Result<Frame, String> {
        // SAFETY: plain allocation.
        let f = unsafe { ff::av_frame_alloc() };
        if f.is_null() {
            return Err("out of memory (frame)".into());
        }
        Ok(Frame(f))
    }
}

impl Drop for Frame {
    fn drop(&mut self) {
        // SAFETY: allocated by av_frame_alloc, freed once.
        unsafe { ff::av_frame_free(&mut self.0) }
    }
}

struct Decoder(*mut ff::AVCodecContext);

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: allocated by avcodec_alloc_context3, freed once.
        unsafe { ff::avcodec_free_context(&mut self.0) }
    }
}

/// Codec parameters copied out of an open input, shared read-only by the decode threads.
struct CodecPar(*mut ff::AVCodecParameters);

// SAFETY: after the copy the parameters are only read (avcodec_parameters_to_context).
unsafe impl Send for CodecPar {}
unsafe impl Sync for CodecPar {}

impl Drop for CodecPar {
    fn drop(&mut self) {
        // SAFETY: allocated by avcodec_parameters_alloc, freed once.
        unsafe { ff::avcodec_parameters_free(&mut self.0) }
    }
}

impl CodecPar {
    fn of(input: &Input) -> Result<CodecPar, String> {
        // SAFETY: plain allocation, then a deep copy of the stream's parameters.
        unsafe {
            let p = CodecPar(ff::avcodec_parameters_alloc());
            if p.0.is_null() {
                return Err("out of memory (codec parameters)".into());
            }
            let ret = ff::avcodec_parameters_copy(p.0, input.codecpar());
            if ret < 0 {
                return Err(format!("cannot copy codec parameters: {}", av_err(ret)));
            }
            Ok(p)
        }
    }
}

impl Decoder {
    /// A decoder for the stream; `threads` 0 lets FFmpeg pick (frame threads on all cores).
    /// `show_all` returns frames the decoder cannot prove intact (the caller picks by pts).
    fn open(
        par: &ff::AVCodecParameters,
        time_base: ff::AVRational,
        threads: usize,
        show_all: bool,
    ) -> Result<Decoder, String> {
        // SAFETY: codec lookup by id; null when FFmpeg has no decoder for it.
        let codec = unsafe { ff::avcodec_find_decoder(par.codec_id) };
        if codec.is_null() {
            // SAFETY: static string.
            let name = unsafe { CStr::from_ptr(ff::avcodec_get_name(par.codec_id)) };
            return Err(format!("no decoder for codec {}", name.to_string_lossy()));
        }
        // SAFETY: codec is valid; the context is freed by Drop.
        let dec = Decoder(unsafe { ff::avcodec_alloc_context3(codec) });
        if dec.0.is_null() {
            return Err("out of memory (codec context)".into());
        }
        // SAFETY: both pointers are valid.
        let ret = unsafe { ff::avcodec_parameters_to_context(dec.0, par) };
        if ret < 0 {
            return Err(format!("bad codec parameters: {}", av_err(ret)));
        }
        // SAFETY: context not yet opened.
        unsafe {
            (*dec.0).thread_count = threads.min(64) as i32;
            (*dec.0).pkt_timebase = time_base;
            if show_all {
                (*dec.0).flags2 |= ff::AV_CODEC_FLAG2_SHOW_ALL;
            }
        }
        // SAFETY: as above.
        let ret = unsafe { ff::avcodec_open2(dec.0, codec, ptr::null_mut()) };
        if ret < 0 {
            return Err(format!("cannot open decoder: {}", av_err(ret)));
        }
        Ok(dec)
    }

    /// Sends one packet (null: start draining), receiving ready frames through `on_frame`
    /// whenever the decoder's input is full. `on_frame` returns true to stop early; so does
    /// this function.
    fn send(
        &self,
        pkt: *const ff::AVPacket,
        frame: &Frame,
        on_frame: &mut dyn FnMut(&Frame) -> Result<bool, String>,
    ) -> Result<bool, String> {
        loop {
            // SAFETY: open decoder; null packet enters draining mode.
            let ret = unsafe { ff::avcodec_send_packet(self.0, pkt) };
            if ret == ff::AVERROR(ff::EAGAIN) {
                if self.receive(frame, on_frame)? {
                    return Ok(true);
                }
                continue;
            }
            if ret < 0 && ret != ff::AVERROR_EOF {
                return Err(format!("corrupt video data: {}", av_err(ret)));
            }
            return Ok(false);
        }
    }

    /// Receives every frame the decoder has ready; true once `on_frame` says stop.
    fn receive(
        &self,
        frame: &Frame,
        on_frame: &mut dyn FnMut(&Frame) -> Result<bool, String>,
    ) -> Result<bool, String> {
        loop {
            // SAFETY: open decoder and allocated frame.
            let ret = unsafe { ff::avcodec_receive_frame(self.0, frame.0) };
            if ret == ff::AVERROR(ff::EAGAIN) || ret == ff::AVERROR_EOF {
                return Ok(false);
            }
            if ret < 0 {
                return Err(format!("decoding failed: {}", av_err(ret)));
            }
            let stop = on_frame(frame);
            // SAFETY: releases the frame's buffers for the next receive.
            unsafe { ff::av_frame_unref(frame.0) };
            if stop? {
                return Ok(true);
            }
        }
    }
}

/// YUV (or anything) to RGB24 at a fixed output size.
struct Converter {
    sws: *mut ff::SwsContext,
    out: Frame,
    w: i32,
    h: i32,
}

impl Drop for Converter {
    fn drop(&mut self) {
        // SAFETY: null or a context from sws_getCachedContext.
        unsafe { ff::sws_freeContext(self.sws) }
    }
}

impl Converter {
    fn new(w: i32, h: i32) -> Result<Converter, String> {
        let out = Frame::new()?;
        // SAFETY: out is a fresh frame; av_frame_get_buffer allocates aligned, padded planes.
        let ret = unsafe {
            (*out.0).format = ff::AVPixelFormat::AV_PIX_FMT_RGB24 as i32;
            (*out.0).width = w;
            (*out.0).height = h;
            ff::av_frame_get_buffer(out.0, 0)
        };
        if ret < 0 {
            return Err(format!("cannot allocate an RGB frame: {}", av_err(ret)));
        }
        Ok(Converter {
            sws: ptr::null_mut(),
            out,
            w,
            h,
        })
    }

    /// Converts `src` and appends the packed RGB24 rows to `dst`.
    fn convert(&mut self, src: &Frame, dst: &mut Vec<u8>) -> Result<(), String> {
        // SAFETY: src holds a decoded frame; its format is checked before the enum conversion.
        unsafe {
            let f = &*src.0;
            if f.format < 0 || f.format >= ff::AVPixelFormat::AV_PIX_FMT_NB as i32 {
                return Err(format!(
                    "decoder returned an unknown pixel format {}",
                    f.format
                ));
            }
            let fmt: ff::AVPixelFormat = std::mem::transmute::<i32, ff::AVPixelFormat>(f.format);
            self.sws = ff::sws_getCachedContext(
                self.sws,
                f.width,
                f.height,
                fmt,
                self.w,
                self.h,
                ff::AVPixelFormat::AV_PIX_FMT_RGB24,
                ff::SWS_BILINEAR,
                ptr::null_mut(),
                ptr::null_mut(),
                ptr::null(),
            );
            if self.sws.is_null() {
                return Err(format!("cannot convert pixel format {fmt:?} to RGB"));
            }
            let full = (f.color_range == ff::AVColorRange::AVCOL_RANGE_JPEG) as i32;
            let coeffs = ff::sws_getCoefficients(f.colorspace as i32);
            ff::sws_setColorspaceDetails(
                self.sws,
                coeffs,
                full,
                ff::sws_getCoefficients(ff::SWS_CS_DEFAULT),
                0,
                0,
                1 << 16,
                1 << 16,
            );
            let o = &*self.out.0;
            let ret = ff::sws_scale(
                self.sws,
                f.data.as_ptr() as *const *const u8,
                f.linesize.as_ptr(),
                0,
                f.height,
                o.data.as_ptr(),
                o.linesize.as_ptr(),
            );
            if ret <= 0 {
                return Err(format!("pixel conversion failed ({ret})"));
            }
            let row = self.w as usize * 3;
            for y in 0..self.h as usize {
                let p = o.data[0].add(y * o.linesize[0] as usize);
                dst.extend_from_slice(std::slice::from_raw_parts(p, row));
            }
        }
        Ok(())
    }
}

/// Rotates a packed RGB image (`w`×`h`) clockwise by 90, 180 or 270 degrees, as FFmpeg's
/// `transpose=clock`, `transpose=clock,transpose=clock` and `transpose=cclock` do.
fn rotate_rgb(src: &[u8], w: usize, h: usize, deg: u32) -> Vec<u8> {
    let mut out = vec![0u8; src.len()];
    let px = |x: usize, y: usize| &src[(y * w + x) * 3..(y * w + x) * 3 + 3];
    match deg {
        90 => {
            // Output is h wide, w tall: out(x, y) = in(y, h-1-x).
            for y in 0..w {
                for x in 0..h {
                    out[(y * h + x) * 3..(y * h + x) * 3 + 3].copy_from_slice(px(y, h - 1 - x));
                }
            }
        }
        270 => {
            // out(x, y) = in(w-1-y, x).
            for y in 0..w {
                for x in 0..h {
                    out[(y * h + x) * 3..(y * h + x) * 3 + 3].copy_from_slice(px(w - 1 - y, x));
                }
            }
        }
        180 => {
            for y in 0..h {
                for x in 0..w {
                    out[(y * w + x) * 3..(y * w + x) * 3 + 3]
                        .copy_from_slice(px(w - 1 - x, h - 1 - y));
                }
            }
        }
        _ => out.copy_from_slice(src),
    }
    out
}

/// Decoded frames to upright packed RGB24 at the source size.
struct Rgb {
    conv: Converter,
    rotation: u32,
    /// Coded (pre-rotation) size.
    cw: usize,
    ch: usize,
}

impl Rgb {
    fn new(info: &VideoInfo) -> Result<Rgb, String> {
        let (w, h) = (info.width as usize, info.height as usize);
        let (cw, ch) = if info.rotation % 180 == 90 {
            (h, w)
        } else {
            (w, h)
        };
        Ok(Rgb {
            conv: Converter::new(cw as i32, ch as i32)?,
            rotation: info.rotation,
            cw,
            ch,
        })
    }

    fn convert(&mut self, f: &Frame) -> Result<Vec<u8>, String> {
        let mut buf = Vec::with_capacity(self.cw * self.ch * 3);
        self.conv.convert(f, &mut buf)?;
        if self.rotation != 0 {
            buf = rotate_rgb(&buf, self.cw, self.ch, self.rotation);
        }
        Ok(buf)
    }
}

/// Probes a video: frame count, fps, duration, size, codec.
pub fn probe(path: &Path) -> Result<VideoInfo> {
    let _budget = ffmpeg_guard::Budget::start();
    let mut input = Input::open(path).map_err(|m| Error::media(path, m))?;
    input.info(None).map_err(|m| Error::media(path, m))
}

/// Demuxes every packet of the video stream (no decoding): the presentation order, keyframes
/// and exact frame count that the seeking path works from.
pub fn index(path: &Path) -> Result<StreamIndex> {
    let _budget = ffmpeg_guard::Budget::start();
    let mut input = Input::open(path).map_err(|m| Error::media(path, m))?;
    input.index().map_err(|m| Error::media(path, m))
}

/// How to decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Seek to keyframes when that skips decoding (the frames are the same either way).
    pub seek: bool,
    /// Decoding threads in all; 0 means all cores (FFmpeg's own choice for a single decoder).
    pub threads: usize,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            seek: true,
            threads: 0,
        }
    }
}

/// Which path produced the frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeMode {
    /// One forward pass from the first packet, decoding every frame up to the last wanted one.
    Forward,
    /// Decode runs planned from the packet index (see [`super::seek`]): from the first packet
    /// or after a seek to a keyframe, skipping unwanted non-reference frames.
    Indexed,
}

/// What a decode did, for benchmarks and tests.
#[derive(Clone, Debug)]
pub struct DecodeStats {
    pub mode: DecodeMode,
    /// Why the forward pass was used although seeking was allowed (None when the plan itself
    /// was one pass from the start, or seeking was off).
    pub note: Option<String>,
    /// Opening the file, probing the stream and, for the seeking path, indexing its packets.
    pub probe_s: f64,
    /// Decoding and RGB conversion (including a forward pass after an abandoned seek).
    pub decode_s: f64,
    /// Frames the packet index lists (when it was built).
    pub indexed_frames: Option<u64>,
    /// Decode runs (1 for the forward pass), those among them that began with a seek, and
    /// the threads that ran them.
    pub runs: usize,
    pub seeks: usize,
    pub workers: usize,
    /// Packets sent to decoders and frames they returned, over all runs.
    pub packets_decoded: u64,
    pub frames_decoded: u64,
    /// Packets of unwanted non-reference frames that runs did not decode.
    pub packets_skipped: u64,
}

impl DecodeStats {
    /// One line: the path taken and the work it did.
    pub fn describe(&self) -> String {
        let of = self
            .indexed_frames
            .map(|n| format!(" of {n}"))
            .unwrap_or_default();
        let mut s = match self.mode {
            DecodeMode::Forward => format!("forward pass, {} frames decoded{of}", self.frames_decoded),
            DecodeMode::Indexed => format!(
                "{} decode runs ({} after a seek to a keyframe) on {} threads, {} frames decoded{of}, {} non-reference frames skipped",
                self.runs, self.seeks, self.workers, self.frames_decoded, self.packets_skipped
            ),
        };
        if let Some(note) = &self.note {
            s += &format!(" ({note})");
        }
        s
    }
}

/// The sampled frames of a video, in the order of `indices`.
#[derive(Clone, Debug)]
pub struct DecodedVideo {
    pub info: VideoInfo,
    pub indices: Vec<u64>,
    /// RGB24 at the source size, one frame per index.
    pub frames: Frames,
    pub stats: DecodeStats,
}

/// Decodes the frames at `indices` (any order, repeats allowed).
pub fn decode_indices(path: &Path, indices: &[u64]) -> Result<DecodedVideo> {
    decode_indices_with(path, indices, &DecodeOptions::default())
}

/// [`decode_indices`] with explicit options.
pub fn decode_indices_with(
    path: &Path,
    indices: &[u64],
    opts: &DecodeOptions,
) -> Result<DecodedVideo> {
    decode_sampled_with(path, |_| Ok(indices.to_vec()), opts)
}

/// Probes the video, asks `select` which frames to keep, then decodes them. Holds at most the
/// selected frames in memory.
pub fn decode_sampled<F>(path: &Path, select: F) -> Result<DecodedVideo>
where
    F: FnOnce(&VideoInfo) -> Result<Vec<u64>, String>,
{
    decode_sampled_with(path, select, &DecodeOptions::default())
}

/// Codecs whose packets each give exactly one frame and whose keyframes are random-access
/// points, so that the packet index numbers frames as the forward pass does.
fn seekable_codec(id: ff::AVCodecID) -> bool {
    use ff::AVCodecID::*;
    matches!(
        id,
        AV_CODEC_ID_H264 | AV_CODEC_ID_HEVC | AV_CODEC_ID_VP9 | AV_CODEC_ID_AV1 | AV_CODEC_ID_MJPEG
    )
}

/// [`decode_sampled`] with explicit options.
pub fn decode_sampled_with<F>(path: &Path, select: F, opts: &DecodeOptions) -> Result<DecodedVideo>
where
    F: FnOnce(&VideoInfo) -> Result<Vec<u64>, String>,
{
    let _budget = ffmpeg_guard::Budget::start();
    let err = |m: String| Error::media(path, m);
    let t0 = Instant::now();
    let mut input = Input::open(path).map_err(err)?;
    let needs_count = input.stream().nb_frames <= 0;
    let field_coded = !matches!(
        input.codecpar().field_order,
        ff::AVFieldOrder::AV_FIELD_PROGRESSIVE | ff::AVFieldOrder::AV_FIELD_UNKNOWN
    );
    let try_seek = opts.seek && seekable_codec(input.codecpar().codec_id) && !field_coded;
    let mut index: Option<Result<StreamIndex, String>> = None;
    let info = if needs_count && try_seek {
        // One demux pass both counts the packets and indexes them.
        let ix = input.index().map_err(err)?;
        let n = ix.packets.len() as u64;
        index = Some(Ok(ix));
        input.info(Some(n)).map_err(err)?
    } else {
        input.info(None).map_err(err)?
    };
    let mut consumed = needs_count;
    let indices = select(&info).map_err(err)?;
    if indices.is_empty() {
        return Err(err("no frames were selected".into()));
    }
    let mut stats = DecodeStats {
        mode: DecodeMode::Forward,
        note: None,
        probe_s: 0.0,
        decode_s: 0.0,
        indexed_frames: None,
        runs: 1,
        seeks: 0,
        workers: 1,
        packets_decoded: 0,
        frames_decoded: 0,
        packets_skipped: 0,
    };
    if try_seek {
        let ix = index.get_or_insert_with(|| {
            consumed = true;
            input.index()
        });
        let plan = match ix {
            Ok(ix) => {
                stats.indexed_frames = Some(ix.frame_count() as u64);
                ix.plan(&indices, MIN_SKIP).map(|segs| (ix, segs))
            }
            Err(e) => Err(e.clone()),
        };
        stats.probe_s = t0.elapsed().as_secs_f64();
        match plan {
            Ok((ix, segs)) => {
                let t1 = Instant::now();
                match decode_runs(
                    path,
                    &input,
                    &info,
                    ix,
                    &segs,
                    &indices,
                    opts.threads,
                    &mut stats,
                ) {
                    Ok(frames) => {
                        stats.mode = DecodeMode::Indexed;
                        stats.decode_s = t1.elapsed().as_secs_f64();
                        return Ok(DecodedVideo {
                            info,
                            indices,
                            frames,
                            stats,
                        });
                    }
                    Err(e) => stats.note = Some(format!("indexed decode abandoned: {e}")),
                }
            }
            Err(e) => stats.note = Some(format!("no seeking: {e}")),
        }
    } else {
        stats.probe_s = t0.elapsed().as_secs_f64();
    }
    let t1 = Instant::now();
    if consumed {
        // A demux pass consumed the input; start again from the top.
        input = Input::open(path).map_err(err)?;
    }
    let frames = decode_forward(input, &info, &indices, opts.threads, &mut stats).map_err(err)?;
    stats.decode_s += t1.elapsed().as_secs_f64();
    Ok(DecodedVideo {
        info,
        indices,
        frames,
        stats,
    })
}

/// The forward pass: decodes from the first packet until the last wanted frame.
fn decode_forward(
    input: Input,
    info: &VideoInfo,
    indices: &[u64],
    threads: usize,
    stats: &mut DecodeStats,
) -> Result<Frames, String> {
    // Output slots per source frame index, visited in increasing index order.
    let mut order: Vec<(u64, usize)> = indices
        .iter()
        .enumerate()
        .map(|(slot, &i)| (i, slot))
        .collect();
    order.sort_unstable();
    let last = order[order.len() - 1].0;

    let (w, h) = (info.width as usize, info.height as usize);
    let fsize = w * h * 3;
    let mut slots: Vec<Option<Vec<u8>>> = vec![None; indices.len()];
    let dec = Decoder::open(input.codecpar(), input.stream().time_base, threads, false)?;
    let mut rgb = Rgb::new(info)?;
    let pkt = Packet::new()?;
    let frame = Frame::new()?;
    let mut next = 0usize; // position in `order`
    let mut decoded = 0u64; // frames returned by the decoder so far
    let mut sent = 0u64;
    let mut flushing = false;

    // Receives every frame the decoder has ready; returns true once the last needed frame is in.
    let mut drain = |next: &mut usize, decoded: &mut u64| -> Result<bool, String> {
        loop {
            // SAFETY: open decoder and allocated frame.
            let ret = unsafe { ff::avcodec_receive_frame(dec.0, frame.0) };
            if ret == ff::AVERROR(ff::EAGAIN) || ret == ff::AVERROR_EOF {
                return Ok(false);
            }
            if ret < 0 {
                return Err(format!(
                    "decoding failed after {decoded} frames: {}",
                    av_err(ret)
                ));
            }
            let idx = *decoded;
            *decoded += 1;
            if *next < order.len() && order[*next].0 == idx {
                let buf = rgb.convert(&frame)?;
                while *next < order.len() && order[*next].0 == idx {
                    slots[order[*next].1] = Some(buf.clone());
                    *next += 1;
                }
            }
            // SAFETY: releases the frame's buffers for the next receive.
            unsafe { ff::av_frame_unref(frame.0) };
            if idx >= last {
                return Ok(true);
            }
        }
    };

    'outer: loop {
        ffmpeg_guard::check()?;
        if !flushing {
            // SAFETY: open input and allocated packet.
            let ret = unsafe { ff::av_read_frame(input.fmt, pkt.0) };
            if ret == ff::AVERROR_EOF {
                flushing = true;
            } else if ret < 0 {
                return Err(format!(
                    "cannot read packet after {decoded} frames: {}",
                    av_err(ret)
                ));
            } else {
                // SAFETY: a filled packet; skip other streams.
                if unsafe { (*pkt.0).stream_index } != input.stream {
                    unsafe { ff::av_packet_unref(pkt.0) };
                    continue;
                }
                sent += 1;
            }
        }
        loop {
            let p = if flushing {
                ptr::null()
            } else {
                pkt.0 as *const _
            };
            // SAFETY: open decoder; null packet enters draining mode.
            let ret = unsafe { ff::avcodec_send_packet(dec.0, p) };
            if ret == ff::AVERROR(ff::EAGAIN) {
                if drain(&mut next, &mut decoded)? {
                    break 'outer;
                }
                continue;
            }
            if ret < 0 && ret != ff::AVERROR_EOF {
                return Err(format!(
                    "corrupt video data after {decoded} frames: {}",
                    av_err(ret)
                ));
            }
            break;
        }
        if !flushing {
            // SAFETY: the decoder holds its own reference to the packet data.
            unsafe { ff::av_packet_unref(pkt.0) };
        }
        if drain(&mut next, &mut decoded)? {
            break;
        }
        if flushing {
            break;
        }
    }
    stats.packets_decoded += sent;
    stats.frames_decoded += decoded;
    if next < order.len() {
        return Err(format!(
            "only {decoded} of {} frames could be decoded, frame {} was requested (truncated or corrupt file?)",
            info.frames, order[next].0
        ));
    }
    let mut data = Vec::with_capacity(fsize * indices.len());
    for s in slots {
        data.extend(s.expect("every slot is filled once all indices are reached"));
    }
    Ok(Frames {
        t: indices.len(),
        h,
        w,
        data,
    })
}

/// Decodes the runs of a seek plan on up to `threads` threads (0: all cores), each thread with
/// its own reader and a fresh decoder per run, and returns the frames at `indices`.
#[allow(clippy::too_many_arguments)]
fn decode_runs(
    path: &Path,
    input: &Input,
    info: &VideoInfo,
    ix: &StreamIndex,
    segs: &[Segment],
    indices: &[u64],
    threads: usize,
    stats: &mut DecodeStats,
) -> Result<Frames, String> {
    let total = if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    };
    let workers = total.min(segs.len()).max(1);
    // Leftover cores go to each decoder's own frame threads.
    let per_decoder = (total / workers).max(1);
    let par = CodecPar::of(input)?;
    let time_base = input.stream().time_base;
    let stream = input.stream;
    let lookup = ix.lookup();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let out: Mutex<Vec<(usize, Vec<u8>)>> = Mutex::new(Vec::new());
    let counts = Mutex::new(RunCounts::default());
    let first_err: Mutex<Option<String>> = Mutex::new(None);
    std::thread::scope(|sc| {
        for _ in 0..workers {
            sc.spawn(|| {
                let res = (|| -> Result<(), String> {
                    let mut reader = Input::open_demuxer(path)?;
                    reader.select(stream);
                    let mut rgb = Rgb::new(info)?;
                    let mut fresh = true;
                    let mut local = Vec::new();
                    let mut n = RunCounts::default();
                    loop {
                        if failed.load(Ordering::Relaxed) {
                            return Ok(());
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(seg) = segs.get(i) else { break };
                        let run = Run {
                            ix,
                            lookup: &lookup,
                            seg,
                            par: &par,
                            time_base,
                            threads: per_decoder,
                        };
                        run.decode(&mut reader, fresh, &mut rgb, &mut local, &mut n)?;
                        fresh = false;
                    }
                    out.lock().unwrap().append(&mut local);
                    let mut c = counts.lock().unwrap();
                    c.sent += n.sent;
                    c.got += n.got;
                    c.skipped += n.skipped;
                    Ok(())
                })();
                if let Err(e) = res {
                    failed.store(true, Ordering::Relaxed);
                    first_err.lock().unwrap().get_or_insert(e);
                }
            });
        }
    });
    if let Some(e) = first_err.into_inner().unwrap() {
        return Err(e);
    }
    let n = counts.into_inner().unwrap();
    stats.runs = segs.len();
    stats.seeks = segs.iter().filter(|s| s.start > 0).count();
    stats.workers = workers;
    stats.packets_decoded += n.sent;
    stats.frames_decoded += n.got;
    stats.packets_skipped += n.skipped;
    let mut got_frames: HashMap<usize, Vec<u8>> = out.into_inner().unwrap().into_iter().collect();
    let (w, h) = (info.width as usize, info.height as usize);
    let mut data = Vec::with_capacity(w * h * 3 * indices.len());
    // Each frame moves out at its last use and is copied for earlier repeats.
    let mut last_use: HashMap<usize, usize> = HashMap::new();
    for (slot, &k) in indices.iter().enumerate() {
        last_use.insert(k as usize, slot);
    }
    for (slot, &k) in indices.iter().enumerate() {
        let k = k as usize;
        if last_use[&k] == slot {
            let f = got_frames
                .remove(&k)
                .ok_or_else(|| format!("frame {k} was not decoded"))?;
            data.extend_from_slice(&f);
        } else {
            let f = got_frames
                .get(&k)
                .ok_or_else(|| format!("frame {k} was not decoded"))?;
            data.extend_from_slice(f);
        }
    }
    Ok(Frames {
        t: indices.len(),
        h,
        w,
        data,
    })
}

/// Work done by decode runs.
#[derive(Default)]
struct RunCounts {
    sent: u64,
    got: u64,
    skipped: u64,
}

/// One decode run of a seek plan.
struct Run<'a> {
    ix: &'a StreamIndex,
    lookup: &'a HashMap<(i64, i64, i32), usize>,
    seg: &'a Segment,
    par: &'a CodecPar,
    time_base: ff::AVRational,
    threads: usize,
}

impl Run<'_> {
    /// Seeks `reader` to the run's first packet and decodes forward until its last target,
    /// checking each packet against the index and each frame's pts against the presentation
    /// order. Appends (presentation index, RGB) of the targets to `out`.
    fn decode(
        &self,
        reader: &mut Input,
        fresh: bool,
        rgb: &mut Rgb,
        out: &mut Vec<(usize, Vec<u8>)>,
        n: &mut RunCounts,
    ) -> Result<(), String> {
        let (ix, seg) = (self.ix, self.seg);
        let pkt = Packet::new()?;
        reader.position(ix, self.lookup, seg.start, fresh, &pkt)?;
        // After a seek to an open-GOP recovery point, FFmpeg's H.264 decoder withholds frames
        // it cannot prove recovered, among them (at the final drain) trailing frames that are
        // exact. Show all and select by pts: leading pictures are dropped below.
        // SAFETY: the parameters were copied from the stream and stay alive.
        let dec = Decoder::open(unsafe { &*self.par.0 }, self.time_base, self.threads, true)?;
        let frame = Frame::new()?;
        // From a keyframe, frames displayed before it are leading pictures: not trusted.
        let key_pts = (seg.start > 0).then(|| ix.packets[seg.start].pts);
        let mut started = key_pts.is_none();
        let mut expect = seg.first_frame;
        let mut ti = 0usize;
        // Non-reference frames the run does not want are not decoded at all: no other frame
        // depends on them, so the others come out the same.
        let skipped = |rank: usize| {
            ix.packets[ix.frames[rank]].disposable && seg.targets.binary_search(&rank).is_err()
        };
        let mut seen = Vec::new();
        let mut on_frame = |f: &Frame| -> Result<bool, String> {
            n.got += 1;
            // SAFETY: a received frame.
            let pts = unsafe { (*f.0).pts };
            seen.push(pts);
            if !started {
                if pts != NOPTS && key_pts.is_some_and(|k| pts < k) {
                    return Ok(false);
                }
                started = true;
            }
            while expect < ix.frames.len() && skipped(expect) {
                expect += 1;
            }
            if ix.frame_pts.get(expect) != Some(&pts) {
                return Err(format!(
                    "decoder returned pts {pts} where frame {expect} (pts {:?}) was due",
                    ix.frame_pts.get(expect)
                ));
            }
            if seg.targets[ti] == expect {
                out.push((expect, rgb.convert(f)?));
                ti += 1;
            }
            expect += 1;
            Ok(ti == seg.targets.len())
        };
        let mut pos = seg.start;
        loop {
            let want = &ix.packets[pos];
            if pkt.entry().identity() != want.identity() {
                return Err(format!("packet {pos} differs from the index after a seek"));
            }
            let skip = want.disposable
                && ix
                    .rank_of_packet(pos)
                    .is_some_and(|r| seg.targets.binary_search(&r).is_err());
            if skip {
                n.skipped += 1;
                // SAFETY: releases the packet's data.
                unsafe { ff::av_packet_unref(pkt.0) };
                pos += 1;
                if pos == ix.packets.len() || !reader.read_video(&pkt)? {
                    break;
                }
                continue;
            }
            n.sent += 1;
            let done = dec.send(pkt.0, &frame, &mut on_frame)?;
            // SAFETY: the decoder holds its own reference to the packet data.
            unsafe { ff::av_packet_unref(pkt.0) };
            if done || dec.receive(&frame, &mut on_frame)? {
                return Ok(());
            }
            pos += 1;
            if pos == ix.packets.len() || !reader.read_video(&pkt)? {
                break;
            }
        }
        if dec.send(ptr::null(), &frame, &mut on_frame)? || dec.receive(&frame, &mut on_frame)? {
            return Ok(());
        }
        Err(format!(
            "the run from packet {} ended before frame {} (got {seen:?})",
            seg.start, seg.targets[ti]
        ))
    }
}
