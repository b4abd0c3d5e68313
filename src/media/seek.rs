//! Where to start decoding for a sparse set of frames (pure planning; no FFmpeg here).
//!
//! The forward decode numbers frames in the order the decoder returns them: presentation order,
//! one frame per packet. A packet-only demux pass (no decoding) lists every packet of the video
//! stream in decode order with its pts, position and keyframe flag; sorting the packets that
//! yield a frame by pts gives the same numbering without decoding, for constant or variable
//! frame rates alike ([`StreamIndex`]). Frames are then identified by pts, never by
//! `pts × fps`.
//!
//! A keyframe K is a valid start when no packet before it in decode order is displayed after
//! it: then decoding from K reproduces every frame displayed at or after K exactly (the
//! random-access property of IDR, open-GOP recovery points, HEVC CRA, VP9 and intra-only
//! keyframes). Frames displayed before K but decoded after it (open-GOP leading pictures, which
//! reference the previous GOP) are not trusted: a wanted leading picture starts from an earlier
//! keyframe instead. For each wanted frame the plan takes the latest valid start, and opens a
//! new decode run ([`Segment`]) only when that start lies beyond the packets the current run
//! needs anyway, so dense sampling stays one forward pass and no frame is decoded twice.

use std::collections::HashMap;

/// FFmpeg's "no timestamp" value (AV_NOPTS_VALUE).
pub const NOPTS: i64 = i64::MIN;

/// Packets a new decode run must skip to be worth its seek and fresh decoder (which cost about
/// as much as decoding a few small frames).
pub const MIN_SKIP: usize = 4;

/// One packet of the video stream, in decode (file) order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketEntry {
    pub pts: i64,
    pub dts: i64,
    /// Byte position in the file (-1 when the demuxer does not say).
    pub pos: i64,
    pub size: i32,
    pub key: bool,
    /// Decoded for reference but never output (AV_PKT_FLAG_DISCARD, e.g. before an edit list's
    /// start).
    pub discard: bool,
    /// No other frame references this one (H.264 nal_ref_idc 0 in every slice), so a decode
    /// run that does not want it need not decode it.
    pub disposable: bool,
}

impl PacketEntry {
    /// What identifies a packet when it is read again after a seek (dts is left out: some
    /// demuxers derive it from the packets read before).
    pub fn identity(&self) -> (i64, i64, i32) {
        (self.pts, self.pos, self.size)
    }

    /// Whether the decoder returns a frame for this packet.
    fn yields_frame(&self) -> bool {
        !self.discard && self.size > 0
    }
}

/// The packets of a video stream and the presentation order of its frames.
#[derive(Clone, Debug)]
pub struct StreamIndex {
    /// Decode order.
    pub packets: Vec<PacketEntry>,
    /// Decode position of the packet of each frame, in presentation order.
    pub frames: Vec<usize>,
    /// pts of each frame, in presentation order (increasing).
    pub frame_pts: Vec<i64>,
    /// Presentation index of each packet's frame (usize::MAX for packets without one).
    rank: Vec<usize>,
    /// Decode positions of the valid starts (see the module comment), increasing; 0 first.
    starts: Vec<usize>,
    /// `need[k]`: the last decode position among frames 0..=k, i.e. the least a decoder must
    /// read before it can return frame k.
    need: Vec<usize>,
    /// Why frames cannot be located by pts, when they cannot.
    pub unseekable: Option<String>,
}

/// One decode run: seek to `start`, decode forward, keep `targets`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Decode position of the first packet (0, or a valid keyframe).
    pub start: usize,
    /// Presentation index of the first frame the run returns: 0 from the file start, else the
    /// keyframe's own (frames displayed before it are dropped).
    pub first_frame: usize,
    /// Wanted presentation indices, increasing, all >= `first_frame`.
    pub targets: Vec<usize>,
    /// The last decode position the targets need (at least).
    pub end: usize,
}

impl Segment {
    /// Packets this run decodes at the least.
    pub fn cost(&self) -> usize {
        self.end + 1 - self.start
    }
}

impl StreamIndex {
    pub fn new(packets: Vec<PacketEntry>) -> StreamIndex {
        let mut unseekable = None;
        let mut frames: Vec<usize> = (0..packets.len())
            .filter(|&i| packets[i].yields_frame())
            .collect();
        if packets.iter().any(|p| p.size <= 0) {
            // An empty packet tells a decoder to drain: the forward decode's count is unclear.
            unseekable = Some("the stream has empty packets".to_string());
        }
        if let Some(i) = frames.iter().find(|&&i| packets[i].pts == NOPTS) {
            unseekable = Some(format!("packet {i} has no pts"));
        }
        frames.sort_by_key(|&i| (packets[i].pts, i));
        let frame_pts: Vec<i64> = frames.iter().map(|&i| packets[i].pts).collect();
        let mut rank = vec![usize::MAX; packets.len()];
        for (r, &i) in frames.iter().enumerate() {
            rank[i] = r;
        }
        if unseekable.is_none() {
            if let Some(w) = frame_pts.windows(2).find(|w| w[0] == w[1]) {
                unseekable = Some(format!("two frames share pts {}", w[0]));
            }
        }
        // Whether a decoder returns frames before the first keyframe, or the leading pictures
        // of an open GOP at the very start (whose references were cut off), is its own choice
        // (FFmpeg's H.264 and HEVC decoders drop them): the forward decode's numbering could
        // differ from the index, so such streams are decoded forward.
        if unseekable.is_none() {
            match packets.first() {
                None => unseekable = Some("the stream has no packets".to_string()),
                Some(p) if !p.key => {
                    unseekable = Some("the stream does not start with a keyframe".to_string())
                }
                Some(p) if frame_pts.first().is_some_and(|&f| f < p.pts) => {
                    unseekable = Some(
                        "the stream starts with leading pictures of a cut open GOP".to_string(),
                    )
                }
                _ => {}
            }
        }
        // Valid starts: keyframes that no earlier packet is displayed after.
        let mut starts = vec![0];
        let mut max_before = NOPTS;
        for (i, p) in packets.iter().enumerate() {
            if i > 0 && p.key && p.yields_frame() && p.pts != NOPTS && max_before < p.pts {
                starts.push(i);
            }
            max_before = max_before.max(p.pts);
        }
        let mut need = Vec::with_capacity(frames.len());
        let mut m = 0;
        for &d in &frames {
            m = m.max(d);
            need.push(m);
        }
        StreamIndex {
            packets,
            frames,
            frame_pts,
            rank,
            starts,
            need,
            unseekable,
        }
    }

    /// Frames the forward decode returns (when every packet yields one).
    pub fn frame_count(&self) -> usize {
        self.frames.len()
    }

    /// Valid seek points, the file start included.
    pub fn start_count(&self) -> usize {
        self.starts.len()
    }

    /// Presentation index of the frame of the packet at decode position `pos`.
    pub fn rank_of_packet(&self, pos: usize) -> Option<usize> {
        self.rank.get(pos).copied().filter(|&r| r != usize::MAX)
    }

    /// Presentation index of the frame with this pts.
    fn rank_of_pts(&self, pts: i64) -> Option<usize> {
        self.frame_pts.binary_search(&pts).ok()
    }

    /// The latest valid start from which frame `k` decodes exactly.
    fn start_for(&self, k: usize) -> usize {
        let (d, pts) = (self.frames[k], self.frame_pts[k]);
        let mut j = self.starts.partition_point(|&s| s <= d);
        while j > 1 {
            let s = self.starts[j - 1];
            if self.packets[s].pts <= pts {
                return s;
            }
            j -= 1;
        }
        0
    }

    /// Decode runs that return the frames at `targets` (presentation indices, any order,
    /// repeats allowed), in increasing order of position. A new run starts only where it skips
    /// more than `min_skip` packets that the current run would otherwise decode (see
    /// [`MIN_SKIP`]).
    pub fn plan(&self, targets: &[u64], min_skip: usize) -> Result<Vec<Segment>, String> {
        if let Some(why) = &self.unseekable {
            return Err(why.clone());
        }
        let mut t: Vec<u64> = targets.to_vec();
        t.sort_unstable();
        t.dedup();
        let mut segs: Vec<Segment> = Vec::new();
        for &k in &t {
            if k >= self.frames.len() as u64 {
                return Err(format!(
                    "frame {k} is past the {} indexed frames",
                    self.frames.len()
                ));
            }
            let k = k as usize;
            let s = self.start_for(k);
            match segs.last_mut() {
                // Continuing decodes no more packets than starting again at s (or only a few).
                Some(seg) if s <= seg.end + min_skip => {
                    seg.targets.push(k);
                    seg.end = seg.end.max(self.need[k]);
                }
                _ => {
                    let first_frame = if s == 0 {
                        0
                    } else {
                        self.rank_of_pts(self.packets[s].pts)
                            .expect("a valid start yields a frame")
                    };
                    segs.push(Segment {
                        start: s,
                        first_frame,
                        targets: vec![k],
                        end: self.need[k].max(s),
                    });
                }
            }
        }
        Ok(segs)
    }

    /// Identity of each packet -> its decode position (the first one, for duplicates).
    pub fn lookup(&self) -> HashMap<(i64, i64, i32), usize> {
        let mut m = HashMap::with_capacity(self.packets.len());
        for (i, p) in self.packets.iter().enumerate() {
            m.entry(p.identity()).or_insert(i);
        }
        m
    }
}

/// Whether an H.264 access unit is a non-reference picture: it has coded slices and all of
/// them carry nal_ref_idc 0. `nal_len` is the AVCC length-prefix size (1, 2 or 4 bytes, from
/// the avcC extradata), or None for Annex B start codes. Anything unparsable counts as a
/// reference picture.
pub fn h264_disposable(data: &[u8], nal_len: Option<usize>) -> bool {
    let mut slices = 0;
    let mut check = |nal: &[u8]| -> bool {
        let Some(&h) = nal.first() else { return true };
        match h & 0x1f {
            // Coded slice (non-IDR / IDR): its nal_ref_idc decides.
            1 | 5 => {
                slices += 1;
                h >> 5 == 0
            }
            // Data partitions and extension slices: do not guess.
            2..=4 | 20 | 21 => false,
            _ => true,
        }
    };
    match nal_len {
        Some(n) if (1..=4).contains(&n) => {
            let mut rest = data;
            while !rest.is_empty() {
                if rest.len() < n {
                    return false;
                }
                let len = rest[..n].iter().fold(0usize, |a, &b| a << 8 | b as usize);
                rest = &rest[n..];
                if len > rest.len() || !check(&rest[..len]) {
                    return false;
                }
                rest = &rest[len..];
            }
        }
        Some(_) => return false,
        None => {
            // NAL units start after each 00 00 01.
            let mut i = 0;
            let mut start = None;
            while i + 2 < data.len() {
                if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
                    if let Some(s) = start {
                        if !check(&data[s..i]) {
                            return false;
                        }
                    }
                    start = Some(i + 3);
                    i += 3;
                } else {
                    i += 1;
                }
            }
            if let Some(s) = start {
                if !check(&data[s.min(data.len())..]) {
                    return false;
                }
            }
        }
    }
    slices > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pk(pts: i64, key: bool) -> PacketEntry {
        PacketEntry {
            pts,
            dts: NOPTS,
            pos: pts * 100,
            size: 10,
            key,
            discard: false,
            disposable: false,
        }
    }

    /// Keyframes at pts 0 (IDR), 4 and 8; the last two open a GOP, each followed in decode
    /// order by a leading B-frame (pts 3, 7) that references the previous GOP.
    fn open_gop() -> StreamIndex {
        StreamIndex::new(vec![
            pk(0, true),
            pk(2, false),
            pk(1, false),
            pk(4, true), // leading B at pts 3 follows
            pk(3, false),
            pk(6, false),
            pk(5, false),
            pk(8, true), // leading B at pts 7 follows
            pk(7, false),
            pk(10, false),
            pk(9, false),
            pk(11, false),
        ])
    }

    #[test]
    fn presentation_order_and_starts() {
        let ix = open_gop();
        assert_eq!(ix.frame_count(), 12);
        assert_eq!(ix.frames, vec![0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 11]);
        assert_eq!(ix.starts, vec![0, 3, 7]);
        // Frame 3 is the leading picture of the keyframe at pts 4: it starts one GOP earlier.
        assert_eq!(ix.start_for(3), 0);
        assert_eq!(ix.start_for(4), 3);
        assert_eq!(ix.start_for(7), 3);
        assert_eq!(ix.start_for(8), 7);
        assert_eq!(ix.start_for(11), 7);
    }

    #[test]
    fn sparse_targets_seek_dense_do_not() {
        let ix = open_gop();
        let segs = ix.plan(&[1, 9], 0).unwrap();
        assert_eq!(
            segs,
            vec![
                Segment {
                    start: 0,
                    first_frame: 0,
                    targets: vec![1],
                    end: 2
                },
                Segment {
                    start: 7,
                    first_frame: 8,
                    targets: vec![9],
                    end: 10
                }
            ]
        );
        // Every frame: one run from the start.
        let all: Vec<u64> = (0..12).rev().collect();
        let segs = ix.plan(&all, 0).unwrap();
        assert_eq!(segs.len(), 1);
        assert_eq!(segs[0].targets, (0..12).collect::<Vec<_>>());
        // A wanted leading picture starts one keyframe earlier.
        let segs = ix.plan(&[0, 7, 7], 0).unwrap();
        assert_eq!(segs.len(), 2);
        assert_eq!((segs[1].start, segs[1].first_frame), (3, 4));
        // Unless the skip is too short to pay for a new run.
        assert_eq!(ix.plan(&[0, 7, 7], 3).unwrap().len(), 1);
        assert!(ix.plan(&[12], 0).is_err());
    }

    #[test]
    fn h264_reference_flags() {
        // AVCC, 4-byte lengths: an SEI (type 6) then a non-reference slice (idc 0, type 1).
        let au = [0, 0, 0, 2, 0x06, 0x05, 0, 0, 0, 3, 0x01, 0x9a, 0x00];
        assert!(h264_disposable(&au, Some(4)));
        // The same with a reference slice (idc 2).
        let au = [0, 0, 0, 2, 0x06, 0x05, 0, 0, 0, 3, 0x41, 0x9a, 0x00];
        assert!(!h264_disposable(&au, Some(4)));
        // Two slices, the second one a reference: not disposable.
        let au = [0, 0, 0, 2, 0x01, 0x9a, 0, 0, 0, 2, 0x21, 0x9a];
        assert!(!h264_disposable(&au, Some(4)));
        // No slice at all, a truncated length, and Annex B.
        assert!(!h264_disposable(&[0, 0, 0, 2, 0x06, 0x05], Some(4)));
        assert!(!h264_disposable(&[0, 0, 0, 9, 0x01, 0x9a], Some(4)));
        assert!(h264_disposable(
            &[0, 0, 0, 1, 0x09, 0xf0, 0, 0, 1, 0x01, 0x9a],
            None
        ));
        assert!(!h264_disposable(
            &[0, 0, 1, 0x65, 0x88, 0, 0, 1, 0x01, 0x9a],
            None
        ));
    }

    #[test]
    fn unusable_indexes() {
        let mut p = vec![pk(0, true), pk(1, false)];
        p[1].pts = NOPTS;
        assert!(StreamIndex::new(p).plan(&[0], 0).is_err());
        let p = vec![pk(0, true), pk(0, false)];
        assert!(StreamIndex::new(p).plan(&[0], 0).is_err());
        // A keyframe displayed before an earlier packet is no valid start.
        let ix = StreamIndex::new(vec![pk(0, true), pk(5, false), pk(4, true), pk(6, false)]);
        assert_eq!(ix.starts, vec![0]);
        // A stream that does not start at a keyframe, or starts with leading pictures.
        assert!(StreamIndex::new(vec![pk(1, false), pk(2, true)])
            .plan(&[1], 0)
            .is_err());
        assert!(
            StreamIndex::new(vec![pk(2, true), pk(1, false), pk(3, false)])
                .plan(&[2], 0)
                .is_err()
        );
        // Discarded packets are decoded but yield no frame.
        let mut p = vec![pk(0, true), pk(1, false), pk(2, false)];
        p[0].discard = true;
        let ix = StreamIndex::new(p);
        assert_eq!(ix.frames, vec![1, 2]);
    }
}
