//! Video decoding through FFmpeg (ffmpeg-sys-next), wrapped in a safe API.
//!
//! One forward pass: packets are demuxed and decoded in order, frames are numbered in
//! presentation order as the decoder returns them, and only the sampled ones are converted to
//! RGB24 (at the source size) and kept. Decoding stops after the last sampled frame. No seeking:
//! with long GOPs a seek per frame decodes the same frames again and again.
//!
//! The RGB conversion mirrors what decord (the reference reader) does through its
//! `scale=W:H` filter graph: swscale with bilinear flags and the frame's own colour matrix and
//! range (unspecified means BT.601, limited range).

use std::ffi::{CStr, CString};
use std::path::Path;
use std::ptr;

use ffmpeg_sys_next as ff;

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
        let mut input = Input { fmt, stream: -1 };
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
        input.stream = st;
        Ok(input)
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
        loop {
            // SAFETY: open context and allocated packet.
            let ret = unsafe { ff::av_read_frame(self.fmt, pkt.0) };
            if ret == ff::AVERROR_EOF {
                break;
            }
            if ret < 0 {
                return Err(format!("cannot read packets: {}", av_err(ret)));
            }
            // SAFETY: av_read_frame filled the packet; unref releases its data.
            unsafe {
                if (*pkt.0).stream_index == self.stream {
                    n += 1;
                }
                ff::av_packet_unref(pkt.0);
            }
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

    fn info(&mut self, count_if_unknown: bool) -> Result<VideoInfo, String> {
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
        if frames == 0 && count_if_unknown {
            frames = self.count_packets()?;
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

impl Decoder {
    fn open(input: &Input) -> Result<Decoder, String> {
        let par = input.codecpar();
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
        // SAFETY: context not yet opened; 0 threads = FFmpeg picks.
        unsafe {
            (*dec.0).thread_count = 0;
            (*dec.0).pkt_timebase = input.stream().time_base;
        }
        // SAFETY: as above.
        let ret = unsafe { ff::avcodec_open2(dec.0, codec, ptr::null_mut()) };
        if ret < 0 {
            return Err(format!("cannot open decoder: {}", av_err(ret)));
        }
        Ok(dec)
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

/// Probes a video: frame count, fps, duration, size, codec.
pub fn probe(path: &Path) -> Result<VideoInfo> {
    let _budget = ffmpeg_guard::Budget::start();
    let mut input = Input::open(path).map_err(|m| Error::media(path, m))?;
    input.info(true).map_err(|m| Error::media(path, m))
}

/// The sampled frames of a video, in the order of `indices`.
#[derive(Clone, Debug)]
pub struct DecodedVideo {
    pub info: VideoInfo,
    pub indices: Vec<u64>,
    /// RGB24 at the source size, one frame per index.
    pub frames: Frames,
}

/// Decodes the frames at `indices` (any order, repeats allowed) in one forward pass.
pub fn decode_indices(path: &Path, indices: &[u64]) -> Result<DecodedVideo> {
    decode_sampled(path, |_| Ok(indices.to_vec()))
}

/// Probes the video, asks `select` which frames to keep, then decodes them in one forward
/// pass. Holds at most the selected frames in memory.
pub fn decode_sampled<F>(path: &Path, select: F) -> Result<DecodedVideo>
where
    F: FnOnce(&VideoInfo) -> Result<Vec<u64>, String>,
{
    let _budget = ffmpeg_guard::Budget::start();
    let err = |m: String| Error::media(path, m);
    let mut input = Input::open(path).map_err(err)?;
    let needs_count = input.stream().nb_frames <= 0;
    let info = input.info(true).map_err(err)?;
    if needs_count {
        // The packet count consumed the input; start again from the top.
        input = Input::open(path).map_err(err)?;
    }
    let indices = select(&info).map_err(err)?;
    if indices.is_empty() {
        return Err(err("no frames were selected".into()));
    }
    // Output slots per source frame index, visited in increasing index order.
    let mut order: Vec<(u64, usize)> = indices
        .iter()
        .enumerate()
        .map(|(slot, &i)| (i, slot))
        .collect();
    order.sort_unstable();
    let last = order[order.len() - 1].0;

    // Frames are converted at the coded size, then turned upright (info's size is upright).
    let (w, h) = (info.width as usize, info.height as usize);
    let (cw, ch) = if info.rotation % 180 == 90 {
        (h, w)
    } else {
        (w, h)
    };
    let rotation = info.rotation;
    let fsize = w * h * 3;
    let mut slots: Vec<Option<Vec<u8>>> = vec![None; indices.len()];
    let dec = Decoder::open(&input).map_err(err)?;
    let mut conv = Converter::new(cw as i32, ch as i32).map_err(err)?;
    let pkt = Packet::new().map_err(err)?;
    let frame = Frame::new().map_err(err)?;
    let mut next = 0usize; // position in `order`
    let mut decoded = 0u64; // frames returned by the decoder so far
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
                let mut buf = Vec::with_capacity(fsize);
                conv.convert(&frame, &mut buf)?;
                if rotation != 0 {
                    buf = rotate_rgb(&buf, cw, ch, rotation);
                }
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
        ffmpeg_guard::check().map_err(err)?;
        if !flushing {
            // SAFETY: open input and allocated packet.
            let ret = unsafe { ff::av_read_frame(input.fmt, pkt.0) };
            if ret == ff::AVERROR_EOF {
                flushing = true;
            } else if ret < 0 {
                return Err(err(format!(
                    "cannot read packet after {decoded} frames: {}",
                    av_err(ret)
                )));
            } else {
                // SAFETY: a filled packet; skip other streams.
                if unsafe { (*pkt.0).stream_index } != input.stream {
                    unsafe { ff::av_packet_unref(pkt.0) };
                    continue;
                }
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
                if drain(&mut next, &mut decoded).map_err(err)? {
                    break 'outer;
                }
                continue;
            }
            if ret < 0 && ret != ff::AVERROR_EOF {
                return Err(err(format!(
                    "corrupt video data after {decoded} frames: {}",
                    av_err(ret)
                )));
            }
            break;
        }
        if !flushing {
            // SAFETY: the decoder holds its own reference to the packet data.
            unsafe { ff::av_packet_unref(pkt.0) };
        }
        if drain(&mut next, &mut decoded).map_err(err)? {
            break;
        }
        if flushing {
            break;
        }
    }
    if next < order.len() {
        return Err(err(format!(
            "only {decoded} of {} frames could be decoded, frame {} was requested (truncated or corrupt file?)",
            info.frames, order[next].0
        )));
    }
    let mut data = Vec::with_capacity(fsize * indices.len());
    for s in slots {
        data.extend(s.expect("every slot is filled once all indices are reached"));
    }
    Ok(DecodedVideo {
        info,
        frames: Frames {
            t: indices.len(),
            h,
            w,
            data,
        },
        indices,
    })
}
