//! Header walk.

use super::syntax::Syntax;
use super::values::text;
use super::{
    corrupt, describe, fmt_tag, unsupported, DOUBLE_FLOAT_PIXEL_DATA, FLOAT_PIXEL_DATA,
    IMAGE_ATTRIBUTES, ITEM, ITEM_DELIMITATION, MAGIC, MAX_DEPTH, PIXEL_DATA, PREAMBLE_LEN,
    SEQUENCE_DELIMITATION, TRANSFER_SYNTAX_UID, VOI_LUT_SEQUENCE,
};
use crate::VisionError;

/// Reads little-endian values from `buf`; `base` is `buf`'s offset in the
/// file, for messages.
pub(super) struct Cursor<'a> {
    pub(super) buf: &'a [u8],
    pub(super) pos: usize,
    pub(super) base: usize,
}

impl<'a> Cursor<'a> {
    pub(super) fn new(buf: &'a [u8], base: usize) -> Self {
        Self { buf, pos: 0, base }
    }

    pub(super) fn offset(&self) -> usize {
        self.base.saturating_add(self.pos)
    }

    pub(super) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub(super) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let slice = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(slice)
    }

    pub(super) fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }

    pub(super) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    pub(super) fn peek_u16(&self) -> Option<u16> {
        let end = self.pos.checked_add(2)?;
        Some(u16::from_le_bytes(
            self.buf.get(self.pos..end)?.try_into().ok()?,
        ))
    }

    /// A cursor over `self.buf[start..end]`.
    pub(super) fn sub(&self, start: usize, end: usize) -> Option<Cursor<'a>> {
        Some(Cursor::new(
            self.buf.get(start..end)?,
            self.base.saturating_add(start),
        ))
    }
}

pub(super) struct ElementHeader {
    pub(super) tag: u32,
    /// `None` in implicit VR and for items and delimiters.
    pub(super) vr: Option<[u8; 2]>,
    /// `None` when undefined (0xFFFFFFFF).
    pub(super) len: Option<u32>,
    /// Offset of the header in the file.
    pub(super) at: usize,
}

/// VRs with a 2-byte reserved field and a 4-byte length in explicit VR.
fn has_long_length(vr: [u8; 2]) -> bool {
    matches!(
        &vr,
        b"OB"
            | b"OD"
            | b"OF"
            | b"OL"
            | b"OV"
            | b"OW"
            | b"SQ"
            | b"SV"
            | b"UC"
            | b"UN"
            | b"UR"
            | b"UT"
            | b"UV"
    )
}

pub(super) fn read_header(
    c: &mut Cursor<'_>,
    explicit: bool,
) -> Result<ElementHeader, VisionError> {
    let at = c.offset();
    let truncated = || {
        corrupt(format!(
            "truncated: the file ends inside the element header at byte {at}"
        ))
    };
    let group = c.u16().ok_or_else(truncated)?;
    let element = c.u16().ok_or_else(truncated)?;
    let tag = (u32::from(group) << 16) | u32::from(element);
    let (vr, len) = if group == 0xFFFE || !explicit {
        (None, c.u32().ok_or_else(truncated)?)
    } else {
        let vr: [u8; 2] = c
            .take(2)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(truncated)?;
        if !vr.iter().all(u8::is_ascii_uppercase) {
            return Err(corrupt(format!(
                "{} at byte {at} has no valid VR (bytes {:02X} {:02X})",
                describe(tag),
                vr[0],
                vr[1]
            )));
        }
        let len = if has_long_length(vr) {
            c.take(2).ok_or_else(truncated)?;
            c.u32().ok_or_else(truncated)?
        } else {
            u32::from(c.u16().ok_or_else(truncated)?)
        };
        (Some(vr), len)
    };
    Ok(ElementHeader {
        tag,
        vr,
        len: (len != u32::MAX).then_some(len),
        at,
    })
}

/// Where a walk over elements stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Until {
    /// The end of the cursor (a defined-length item).
    End,
    /// An item delimitation item (an undefined-length item).
    ItemDelimitation,
    /// The top-level Pixel Data element, or the end of the file.
    PixelData,
}

pub(super) enum PixelData<'a> {
    /// Defined length: the samples themselves.
    Native(&'a [u8]),
    /// Undefined length: the items (basic offset table, then fragments),
    /// headers included, without the sequence delimitation item.
    Encapsulated(&'a [u8]),
}

/// A kept element: tag, VR (explicit VR only) and value.
type Kept<'a> = (u32, Option<[u8; 2]>, &'a [u8]);

/// What a walk kept.
#[derive(Default)]
pub(super) struct Found<'a> {
    pub(super) values: Vec<Kept<'a>>,
    /// Contents of the first VOI LUT Sequence item.
    pub(super) voi_lut_item: Option<Cursor<'a>>,
    pub(super) pixel: Option<PixelData<'a>>,
}

impl<'a> Found<'a> {
    pub(super) fn get(&self, tag: u32) -> Option<(Option<[u8; 2]>, &'a [u8])> {
        self.values
            .iter()
            .find(|(t, _, _)| *t == tag)
            .map(|(_, vr, value)| (*vr, *value))
    }
}

/// Walks a data set's elements, checking each declared length against what
/// remains, and keeps the `wanted` ones in `found` (`None`: just skip).
pub(super) fn walk<'a>(
    c: &mut Cursor<'a>,
    explicit: bool,
    depth: u32,
    until: Until,
    wanted: &[u32],
    mut found: Option<&mut Found<'a>>,
) -> Result<(), VisionError> {
    loop {
        if c.remaining() == 0 {
            return match until {
                Until::ItemDelimitation => Err(corrupt(format!(
                    "truncated: a sequence item of undefined length has no item delimitation \
                     (data ends at byte {})",
                    c.offset()
                ))),
                Until::End | Until::PixelData => Ok(()),
            };
        }
        let h = read_header(c, explicit)?;
        if h.tag == ITEM_DELIMITATION && until == Until::ItemDelimitation {
            return Ok(());
        }
        if h.tag >> 16 == 0xFFFE {
            return Err(corrupt(format!(
                "unexpected item or delimitation tag {} at byte {}",
                fmt_tag(h.tag),
                h.at
            )));
        }
        if until == Until::PixelData {
            match h.tag {
                PIXEL_DATA => {
                    let pixel = read_pixel_data(c, &h)?;
                    if let Some(found) = found {
                        found.pixel = Some(pixel);
                    }
                    return Ok(());
                }
                FLOAT_PIXEL_DATA | DOUBLE_FLOAT_PIXEL_DATA => {
                    return Err(unsupported(format!(
                        "float pixel data {} is not supported",
                        fmt_tag(h.tag)
                    )));
                }
                _ => {}
            }
        }
        let keep = wanted.contains(&h.tag);
        match h.len {
            Some(len) => {
                let start = c.pos;
                let value = c.take(len as usize).ok_or_else(|| {
                    corrupt(format!(
                        "{} at byte {} declares {len} bytes, but only {} remain: truncated or corrupt",
                        describe(h.tag),
                        h.at,
                        c.remaining()
                    ))
                })?;
                if let (true, Some(found)) = (keep, found.as_deref_mut()) {
                    let is_sequence = h.vr.is_none() || h.vr == Some(*b"SQ");
                    if h.tag == VOI_LUT_SEQUENCE && is_sequence {
                        if depth >= MAX_DEPTH {
                            return Err(too_deep(h.at));
                        }
                        let mut inner = c
                            .sub(start, c.pos)
                            .ok_or_else(|| corrupt("internal: sequence bounds"))?;
                        found.voi_lut_item = items(&mut inner, explicit, depth + 1, false)?;
                    } else if h.tag != VOI_LUT_SEQUENCE && found.get(h.tag).is_none() {
                        // Of a repeated attribute the first counts (and a
                        // file repeating one cannot grow this list).
                        found.values.push((h.tag, h.vr, value));
                    }
                }
            }
            None => {
                // Undefined length: a sequence. SQ in explicit VR; UN holds
                // implicit VR little-endian content (PS3.5 6.2.2); in
                // implicit VR any element.
                let inner_explicit = match h.vr {
                    None => false,
                    Some(vr) if &vr == b"SQ" => explicit,
                    Some(vr) if &vr == b"UN" => false,
                    Some(vr) => {
                        return Err(corrupt(format!(
                            "{} at byte {} has an undefined length with VR {}",
                            describe(h.tag),
                            h.at,
                            String::from_utf8_lossy(&vr)
                        )))
                    }
                };
                if depth >= MAX_DEPTH {
                    return Err(too_deep(h.at));
                }
                let first = items(c, inner_explicit, depth + 1, true)?;
                if let (true, Some(found)) =
                    (keep && h.tag == VOI_LUT_SEQUENCE, found.as_deref_mut())
                {
                    found.voi_lut_item = first;
                }
            }
        }
    }
}

fn too_deep(at: usize) -> VisionError {
    corrupt(format!(
        "sequences nested more than {MAX_DEPTH} deep at byte {at}"
    ))
}

/// Walks a sequence's items, to the cursor's end or (when `delimited`) to
/// the sequence delimitation item; returns the first item's contents.
fn items<'a>(
    c: &mut Cursor<'a>,
    explicit: bool,
    depth: u32,
    delimited: bool,
) -> Result<Option<Cursor<'a>>, VisionError> {
    let mut first = None;
    loop {
        if c.remaining() == 0 {
            if delimited {
                return Err(corrupt(format!(
                    "truncated: a sequence of undefined length has no sequence delimitation \
                     (data ends at byte {})",
                    c.offset()
                )));
            }
            return Ok(first);
        }
        let h = read_header(c, explicit)?;
        match h.tag {
            SEQUENCE_DELIMITATION if delimited => return Ok(first),
            ITEM => {
                let content = match h.len {
                    Some(len) => {
                        let start = c.pos;
                        c.take(len as usize).ok_or_else(|| {
                            corrupt(format!(
                                "sequence item at byte {} declares {len} bytes, but only {} remain",
                                h.at,
                                c.remaining()
                            ))
                        })?;
                        c.sub(start, c.pos)
                    }
                    None => {
                        let start = c.pos;
                        walk(c, explicit, depth, Until::ItemDelimitation, &[], None)?;
                        // Without the 8-byte item delimitation item.
                        c.sub(start, c.pos.saturating_sub(8).max(start))
                    }
                };
                if first.is_none() {
                    first = content;
                }
            }
            other => {
                return Err(corrupt(format!(
                    "expected a sequence item at byte {}, found {}",
                    h.at,
                    fmt_tag(other)
                )))
            }
        }
    }
}

fn read_pixel_data<'a>(
    c: &mut Cursor<'a>,
    h: &ElementHeader,
) -> Result<PixelData<'a>, VisionError> {
    if let Some(len) = h.len {
        return c.take(len as usize).map(PixelData::Native).ok_or_else(|| {
            corrupt(format!(
                "Pixel Data (7FE0,0010) declares {len} bytes, but only {} remain: truncated",
                c.remaining()
            ))
        });
    }
    // Encapsulated: items of defined length (basic offset table, then
    // fragments) up to the sequence delimitation item.
    let start = c.pos;
    loop {
        if c.remaining() == 0 {
            return Err(corrupt(
                "truncated: encapsulated Pixel Data has no sequence delimitation item",
            ));
        }
        let item_start = c.pos;
        let ih = read_header(c, false)?;
        match (ih.tag, ih.len) {
            (ITEM, Some(len)) => {
                c.take(len as usize).ok_or_else(|| {
                    corrupt(format!(
                        "Pixel Data fragment at byte {} declares {len} bytes, but only {} remain: \
                         truncated",
                        ih.at,
                        c.remaining()
                    ))
                })?;
            }
            (ITEM, None) => {
                return Err(corrupt(format!(
                    "Pixel Data fragment at byte {} has an undefined length",
                    ih.at
                )))
            }
            (SEQUENCE_DELIMITATION, _) => {
                let items = c
                    .buf
                    .get(start..item_start)
                    .ok_or_else(|| corrupt("internal: pixel data bounds"))?;
                return Ok(PixelData::Encapsulated(items));
            }
            (other, _) => {
                return Err(corrupt(format!(
                    "expected a Pixel Data item at byte {}, found {}",
                    ih.at,
                    fmt_tag(other)
                )))
            }
        }
    }
}

/// The items of encapsulated Pixel Data (already checked by
/// [`read_pixel_data`]): the basic offset table, then the fragments.
pub(super) struct Fragments<'a> {
    pub(super) rest: &'a [u8],
}

impl<'a> Fragments<'a> {
    pub(super) fn new(items: &'a [u8]) -> Self {
        Self { rest: items }
    }
}

impl<'a> Iterator for Fragments<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(self.rest.get(4..8)?.try_into().ok()?) as usize;
        let end = len.checked_add(8)?;
        let fragment = self.rest.get(8..end)?;
        self.rest = self.rest.get(end..)?;
        Some(fragment)
    }
}

/// The first frame of encapsulated Pixel Data: the fragments after the
/// offset table up to and including the one ending with FFD9 (end of image
/// in JPEG and JPEG-LS, end of codestream in JPEG 2000); a frame may span
/// fragments, and each fragment may carry one pad byte.
pub(super) fn first_frame(items: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for fragment in Fragments::new(items).skip(1) {
        out.extend_from_slice(fragment);
        if fragment.ends_with(&[0xFF, 0xD9]) || fragment.ends_with(&[0xFF, 0xD9, 0x00]) {
            break;
        }
    }
    out
}

pub(super) struct Parsed<'a> {
    pub(super) syntax: Syntax,
    pub(super) uid: String,
    pub(super) found: Found<'a>,
}

pub(super) fn parse(bytes: &[u8]) -> Result<Parsed<'_>, VisionError> {
    if bytes.get(PREAMBLE_LEN..PREAMBLE_LEN + MAGIC.len()) != Some(MAGIC.as_slice()) {
        return Err(corrupt("truncated: the file ends inside the DICM prefix"));
    }
    let mut c = Cursor::new(bytes, 0);
    c.pos = PREAMBLE_LEN + MAGIC.len();

    // File meta group: always explicit VR little endian, group 0002.
    let mut uid = None;
    while c.peek_u16() == Some(0x0002) {
        let h = read_header(&mut c, true)?;
        let len = h.len.ok_or_else(|| {
            corrupt(format!(
                "file meta element {} has an undefined length",
                fmt_tag(h.tag)
            ))
        })?;
        let value = c.take(len as usize).ok_or_else(|| {
            corrupt(format!(
                "file meta element {} declares {len} bytes, but only {} remain: truncated",
                fmt_tag(h.tag),
                c.remaining()
            ))
        })?;
        if h.tag == TRANSFER_SYNTAX_UID {
            uid = Some(value);
        }
    }
    let uid = uid.ok_or_else(|| {
        corrupt(
            "the file meta group has no Transfer Syntax UID (0002,0010): truncated or not Part 10",
        )
    })?;
    let uid = text(TRANSFER_SYNTAX_UID, uid)?.to_owned();
    let syntax = Syntax::for_uid(&uid)?;

    let mut found = Found::default();
    walk(
        &mut c,
        syntax.explicit_vr(),
        0,
        Until::PixelData,
        IMAGE_ATTRIBUTES,
        Some(&mut found),
    )?;
    Ok(Parsed { syntax, uid, found })
}
