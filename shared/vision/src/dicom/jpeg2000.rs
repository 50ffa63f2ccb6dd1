//! JPEG 2000 (PS3.5 A.4.4: `1.2.840.10008.1.2.4.90` lossless only and
//! `.91` lossy or lossless), decoded with OpenJPEG (`openjpeg-sys`, built
//! from its vendored C sources).
//!
//! The codestream's main header is read first (`opj_read_header`, which
//! allocates no sample buffer) and its size, component count, precision
//! and subsampling are checked against the DICOM header before anything is
//! decoded. OpenJPEG's own error messages are kept and reported.

use std::ffi::{c_char, c_void, CStr};
use std::ptr::{self, NonNull};

use openjpeg_sys as opj;

use super::parse::{first_frame, Found};
use super::render::render;
use super::syntax::Syntax;
use super::values::{to_usize, Layout, Photometric};
use super::{corrupt, unsupported};
use crate::{GrayImage8, VisionError};

/// `FF4F FF51`: start of codestream, then the image and tile size marker.
const J2K_CODESTREAM: [u8; 4] = [0xFF, 0x4F, 0xFF, 0x51];
/// The JP2 signature box (some writers wrap the codestream in JP2).
const JP2_SIGNATURE: [u8; 12] = [
    0, 0, 0, 0x0C, b'j', b'P', b' ', b' ', 0x0D, 0x0A, 0x87, 0x0A,
];

pub(super) fn decode_jpeg2000_frame(
    layout: &Layout,
    found: &Found<'_>,
    syntax: Syntax,
    items: &[u8],
) -> Result<GrayImage8, VisionError> {
    let stream = first_frame(items);
    let format = if stream.starts_with(&J2K_CODESTREAM) {
        opj::CODEC_FORMAT::OPJ_CODEC_J2K
    } else if stream.starts_with(&JP2_SIGNATURE) {
        opj::CODEC_FORMAT::OPJ_CODEC_JP2
    } else {
        return Err(corrupt(
            "the first Pixel Data fragment is not a JPEG 2000 codestream \
             (no start-of-codestream and size markers, no JP2 signature)",
        ));
    };
    let decoder = Decoder::new(&stream, format)?;
    let image = decoder.read_header()?;
    let components = image.components();
    let first = components
        .first()
        .ok_or_else(|| corrupt("JPEG 2000 codestream declares no component"))?;
    if components.len() != usize::from(layout.samples) {
        return Err(corrupt(format!(
            "JPEG 2000 codestream has {} component(s), but Samples per Pixel is {}",
            components.len(),
            layout.samples
        )));
    }
    for c in components {
        if (c.dx, c.dy) != (1, 1) {
            return Err(unsupported(format!(
                "JPEG 2000 component subsampled {}x{} is not supported",
                c.dx, c.dy
            )));
        }
        if (c.w, c.h) != (layout.width, layout.height) {
            return Err(corrupt(format!(
                "JPEG 2000 codestream declares {}x{}, but Rows × Columns is {}x{}",
                c.w, c.h, layout.width, layout.height
            )));
        }
        if (c.prec, c.sgnd) != (first.prec, first.sgnd) {
            return Err(unsupported(
                "JPEG 2000 components of different precision or signedness are not supported",
            ));
        }
    }
    let precision = first.prec;
    let max_precision = u32::from(layout.bits_allocated);
    if precision == 0 || precision > max_precision {
        return Err(corrupt(format!(
            "JPEG 2000 samples of {precision} bits do not fit Bits Allocated {}",
            layout.bits_allocated
        )));
    }
    decoder.decode(&image)?;

    // Like pydicom (APPLY_J2K_CORRECTIONS), the codestream's precision and
    // signedness win over Bits Stored and Pixel Representation when they
    // disagree: they describe the samples that were actually coded.
    let bits_stored = precision as u16;
    let frame_layout = Layout {
        bits_stored,
        high_bit: bits_stored - 1,
        signed: first.sgnd == 1,
        planar: 0,
        // OpenJPEG undoes the codestream's multiple component transform
        // (YBR_RCT, YBR_ICT), so three components are R, G and B.
        photometric: if layout.photometric.is_monochrome() {
            layout.photometric
        } else {
            Photometric::Rgb
        },
        ..*layout
    };
    let pixels = to_usize(layout.pixels())?;
    let mut frame = Vec::with_capacity(to_usize(frame_layout.frame_bytes())?);
    let mask = (1u32 << bits_stored) - 1;
    let planes: Vec<&[i32]> = components
        .iter()
        .map(|c| image.samples(c, pixels))
        .collect::<Result<_, _>>()?;
    for i in 0..pixels {
        for plane in &planes {
            // Two's complement over `bits_stored` bits, as native data holds it.
            let code = plane.get(i).copied().unwrap_or(0) as u32 & mask;
            if frame_layout.bits_allocated == 8 {
                frame.push(code as u8);
            } else {
                frame.extend_from_slice(&(code as u16).to_le_bytes());
            }
        }
    }
    render(&frame_layout, found, syntax, &frame)
}

/// OpenJPEG's messages for one decode; its error handler appends here.
#[derive(Default)]
struct Messages {
    errors: Vec<String>,
}

unsafe extern "C" fn on_error(msg: *const c_char, client_data: *mut c_void) {
    if msg.is_null() || client_data.is_null() {
        return;
    }
    // SAFETY: `client_data` is the `Messages` that `Decoder` owns for as
    // long as the codec exists; OpenJPEG passes a NUL-terminated message.
    let messages = unsafe { &mut *client_data.cast::<Messages>() };
    let text = unsafe { CStr::from_ptr(msg) }.to_string_lossy();
    if messages.errors.len() < 8 {
        messages.errors.push(text.trim().to_owned());
    }
}

/// The encoded bytes OpenJPEG reads through the stream callbacks.
struct Source {
    bytes: *const u8,
    len: usize,
    pos: usize,
}

unsafe extern "C" fn read(buffer: *mut c_void, n: usize, data: *mut c_void) -> usize {
    // SAFETY: `data` is the boxed `Source` the stream owns; `buffer` has
    // room for `n` bytes (OpenJPEG's contract).
    let source = unsafe { &mut *data.cast::<Source>() };
    let remaining = source.len.saturating_sub(source.pos);
    if remaining == 0 || buffer.is_null() {
        return usize::MAX; // OpenJPEG's "end of stream"
    }
    let count = remaining.min(n);
    unsafe { ptr::copy_nonoverlapping(source.bytes.add(source.pos), buffer.cast::<u8>(), count) };
    source.pos += count;
    count
}

unsafe extern "C" fn skip(n: i64, data: *mut c_void) -> i64 {
    let source = unsafe { &mut *data.cast::<Source>() };
    let remaining = source.len.saturating_sub(source.pos);
    let count = usize::try_from(n).unwrap_or(0).min(remaining);
    source.pos += count;
    count as i64
}

unsafe extern "C" fn seek(to: i64, data: *mut c_void) -> i32 {
    let source = unsafe { &mut *data.cast::<Source>() };
    match usize::try_from(to) {
        Ok(to) if to <= source.len => {
            source.pos = to;
            1
        }
        _ => 0,
    }
}

unsafe extern "C" fn free_source(data: *mut c_void) {
    if !data.is_null() {
        drop(unsafe { Box::from_raw(data.cast::<Source>()) });
    }
}

/// A codec and its input stream over `bytes`, destroyed together.
struct Decoder<'a> {
    codec: NonNull<opj::opj_codec_t>,
    stream: NonNull<opj::opj_stream_t>,
    // Allocated once, written by OpenJPEG's error handler during calls,
    // read between them, freed in `Drop` after the codec.
    messages: NonNull<Messages>,
    _bytes: std::marker::PhantomData<&'a [u8]>,
}

impl<'a> Decoder<'a> {
    fn new(bytes: &'a [u8], format: opj::CODEC_FORMAT) -> Result<Self, VisionError> {
        let failed = || corrupt("JPEG 2000: OpenJPEG could not create a decoder");
        // SAFETY: plain constructor calls; every pointer is checked before
        // use and released in `Drop`.
        let codec =
            NonNull::new(unsafe { opj::opj_create_decompress(format) }).ok_or_else(failed)?;
        let stream = match NonNull::new(unsafe { opj::opj_stream_default_create(1) }) {
            Some(stream) => stream,
            None => {
                unsafe { opj::opj_destroy_codec(codec.as_ptr()) };
                return Err(failed());
            }
        };
        let messages = NonNull::from(Box::leak(Box::<Messages>::default()));
        let decoder = Self {
            codec,
            stream,
            messages,
            _bytes: std::marker::PhantomData,
        };
        let source = Box::into_raw(Box::new(Source {
            bytes: bytes.as_ptr(),
            len: bytes.len(),
            pos: 0,
        }));
        let mut parameters = std::mem::MaybeUninit::<opj::opj_dparameters_t>::zeroed();
        // SAFETY: the stream takes ownership of `source` (freed by
        // `free_source`); `messages` outlives the codec (same struct).
        let ready = unsafe {
            let s = stream.as_ptr();
            opj::opj_stream_set_read_function(s, Some(read));
            opj::opj_stream_set_skip_function(s, Some(skip));
            opj::opj_stream_set_seek_function(s, Some(seek));
            opj::opj_stream_set_user_data(s, source.cast(), Some(free_source));
            opj::opj_stream_set_user_data_length(s, bytes.len() as u64);
            opj::opj_set_error_handler(codec.as_ptr(), Some(on_error), messages.as_ptr().cast());
            opj::opj_set_default_decoder_parameters(parameters.as_mut_ptr());
            opj::opj_setup_decoder(codec.as_ptr(), parameters.as_mut_ptr()) == 1
        };
        if !ready {
            return Err(decoder.error("could not set the decoder up"));
        }
        Ok(decoder)
    }

    /// A corrupt-image error with what OpenJPEG said, if anything.
    fn error(&self, what: &str) -> VisionError {
        // SAFETY: no OpenJPEG call is running, so nothing writes meanwhile.
        let errors = unsafe { &self.messages.as_ref().errors };
        if errors.is_empty() {
            corrupt(format!("JPEG 2000: {what}"))
        } else {
            corrupt(format!("JPEG 2000: {what}: {}", errors.join("; ")))
        }
    }

    fn read_header(&self) -> Result<Image, VisionError> {
        let mut image: *mut opj::opj_image_t = ptr::null_mut();
        // SAFETY: codec and stream are live; OpenJPEG allocates `image`.
        let ok = unsafe {
            opj::opj_read_header(self.stream.as_ptr(), self.codec.as_ptr(), &mut image) == 1
        };
        let image = NonNull::new(image).map(Image);
        match (ok, image) {
            (true, Some(image)) => Ok(image),
            _ => Err(self.error("the codestream header does not read")),
        }
    }

    fn decode(&self, image: &Image) -> Result<(), VisionError> {
        // SAFETY: `image` came from this codec's `read_header`.
        let ok = unsafe {
            opj::opj_decode(self.codec.as_ptr(), self.stream.as_ptr(), image.0.as_ptr()) == 1
                && opj::opj_end_decompress(self.codec.as_ptr(), self.stream.as_ptr()) == 1
        };
        if ok {
            Ok(())
        } else {
            Err(self.error("the codestream does not decode (truncated or corrupt)"))
        }
    }
}

impl Drop for Decoder<'_> {
    fn drop(&mut self) {
        // SAFETY: all three were created in `new` and are released once;
        // the codec (which may call the error handler) goes first.
        unsafe {
            opj::opj_stream_destroy(self.stream.as_ptr());
            opj::opj_destroy_codec(self.codec.as_ptr());
            drop(Box::from_raw(self.messages.as_ptr()));
        }
    }
}

/// An image OpenJPEG allocated; destroyed with it.
struct Image(NonNull<opj::opj_image_t>);

impl Image {
    fn components(&self) -> &[opj::opj_image_comp_t] {
        // SAFETY: `comps` holds `numcomps` entries for the image's life.
        unsafe {
            let image = self.0.as_ref();
            if image.comps.is_null() {
                return &[];
            }
            std::slice::from_raw_parts(image.comps, image.numcomps as usize)
        }
    }

    /// A decoded component's samples (`w × h` of them).
    fn samples<'s>(
        &'s self,
        component: &'s opj::opj_image_comp_t,
        pixels: usize,
    ) -> Result<&'s [i32], VisionError> {
        if component.data.is_null() {
            return Err(corrupt("JPEG 2000: a component decoded to no samples"));
        }
        // SAFETY: after a successful decode `data` holds `w × h` samples,
        // and `w × h` was checked to equal `pixels`.
        Ok(unsafe { std::slice::from_raw_parts(component.data, pixels) })
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        // SAFETY: allocated by `opj_read_header`, destroyed once.
        unsafe { opj::opj_image_destroy(self.0.as_ptr()) };
    }
}
