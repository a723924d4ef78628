//! The vector instructions the convolution kernels are written in, chosen at run time.
//!
//! Each kernel is written once, generic over [`Simd`], and compiled three times: for AVX-512F
//! (16 floats per register), for AVX2 + FMA (8) and for plain scalar code (1). [`Isa::detect`]
//! picks the widest the CPU has, so one binary runs on any x86-64 and takes AVX-512 where it
//! exists (no `target-cpu=native` in what ships). The `#[inline(always)]` methods below are
//! inlined into `#[target_feature]` entry points (see `dispatch!` below), which is
//! what lets the intrinsics compile to single instructions.

// Not inlining any of these would leave an intrinsic in a function compiled without its
// instruction set: a call per arithmetic operation instead of one instruction.
#![allow(clippy::inline_always)]

/// An instruction set the kernels can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// 512-bit registers with the int8 dot product (`avx512f` + `avx512vnni`: Ice Lake and
    /// Zen 4 on; an AVX-512 CPU without VNNI takes the AVX2 kernels).
    Avx512,
    /// 256-bit registers with fused multiply-add (`avx2` + `fma`).
    Avx2,
    /// Portable scalar code: the fallback, and a third reference in the tests.
    Scalar,
}

impl Isa {
    /// The widest instruction set this CPU supports.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vnni")
            {
                return Self::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Self::Avx2;
            }
        }
        Self::Scalar
    }

    /// Every instruction set this CPU can run, widest first (the tests check each one).
    pub fn available() -> Vec<Self> {
        let widest = Self::detect();
        [Self::Avx512, Self::Avx2, Self::Scalar]
            .into_iter()
            .skip_while(|&isa| isa != widest)
            .collect()
    }

    /// Floats per register.
    pub fn lanes(self) -> usize {
        match self {
            Self::Avx512 => 16,
            Self::Avx2 => 8,
            Self::Scalar => 1,
        }
    }

    /// The name `fastcnn::simd()` reports: `"avx512f+vnni"`, `"avx2+fma"` or `"scalar"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Avx512 => "avx512f+vnni",
            Self::Avx2 => "avx2+fma",
            Self::Scalar => "scalar",
        }
    }
}

/// One register of `LANES` floats and the operations the kernels use.
///
/// # Safety
/// Implementations may only be used where their instruction set is available: the kernels
/// reach them through `dispatch!`, which checks [`Isa::detect`]'s answer.
/// Loads and stores touch `LANES` floats from the pointer, which the caller keeps in bounds.
pub(crate) unsafe trait Simd: Copy {
    /// Floats per register.
    const LANES: usize;
    /// The register.
    type V: Copy;
    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    /// `a · b + c`, rounded once.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;

    #[inline(always)]
    unsafe fn zero() -> Self::V {
        unsafe { Self::splat(0.0) }
    }

    /// `LANES` 32-bit integers.
    type I: Copy;
    unsafe fn izero() -> Self::I;
    unsafe fn iload(p: *const i32) -> Self::I;
    unsafe fn istore(p: *mut i32, v: Self::I);
    unsafe fn imax(a: Self::I, b: Self::I) -> Self::I;
    /// Per lane, `acc + Σ_b a[b] · w[b]` over the four bytes `b` of the lane, `a`'s unsigned
    /// (the same four in every lane), `w`'s signed: AVX-512 VNNI's `vpdpbusd`, exact.
    unsafe fn dot4(acc: Self::I, a: u32, w: Self::I) -> Self::I;
    unsafe fn to_float(a: Self::I) -> Self::V;
    /// Stores `x` rounded to the nearest integer (ties to even) and clamped to `0..=255` as
    /// `LANES` bytes.
    unsafe fn store_u8(p: *mut u8, x: Self::V);
}

/// Plain `f32` arithmetic, one lane.
#[derive(Clone, Copy)]
pub(crate) struct Scalar;

// SAFETY: plain arithmetic needs no instruction set; pointers are the caller's to keep valid.
unsafe impl Simd for Scalar {
    const LANES: usize = 1;
    type V = f32;
    #[inline(always)]
    unsafe fn splat(x: f32) -> f32 {
        x
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> f32 {
        unsafe { *p }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: f32) {
        unsafe { *p = v }
    }
    #[inline(always)]
    unsafe fn fma(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
    #[inline(always)]
    unsafe fn add(a: f32, b: f32) -> f32 {
        a + b
    }
    #[inline(always)]
    unsafe fn sub(a: f32, b: f32) -> f32 {
        a - b
    }
    #[inline(always)]
    unsafe fn max(a: f32, b: f32) -> f32 {
        a.max(b)
    }
    type I = i32;
    #[inline(always)]
    unsafe fn izero() -> i32 {
        0
    }
    #[inline(always)]
    unsafe fn iload(p: *const i32) -> i32 {
        unsafe { p.read_unaligned() }
    }
    #[inline(always)]
    unsafe fn istore(p: *mut i32, v: i32) {
        unsafe { p.write_unaligned(v) }
    }
    #[inline(always)]
    unsafe fn imax(a: i32, b: i32) -> i32 {
        a.max(b)
    }
    #[inline(always)]
    unsafe fn dot4(acc: i32, a: u32, w: i32) -> i32 {
        let (a, w) = (a.to_le_bytes(), w.to_le_bytes());
        (0..4).fold(acc, |acc, b| acc + i32::from(a[b]) * i32::from(w[b] as i8))
    }
    #[inline(always)]
    unsafe fn to_float(a: i32) -> f32 {
        a as f32
    }
    #[inline(always)]
    unsafe fn store_u8(p: *mut u8, x: f32) {
        // As the vector versions: `min` first (it also turns NaN into 255), round, then `max`.
        unsafe { *p = x.min(255.0).round_ties_even().max(0.0) as u8 }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m128i, __m256, __m256i, __m512, __m512i, _mm_storeu_si128, _mm256_add_epi32,
        _mm256_add_ps, _mm256_and_si256, _mm256_cvtepi32_ps, _mm256_cvtps_epi32, _mm256_fmadd_ps,
        _mm256_loadu_ps, _mm256_loadu_si256, _mm256_madd_epi16, _mm256_max_epi32, _mm256_max_ps,
        _mm256_min_ps, _mm256_set1_epi32, _mm256_set1_ps, _mm256_setzero_si256, _mm256_slli_epi16,
        _mm256_srai_epi16, _mm256_srli_epi16, _mm256_storeu_ps, _mm256_storeu_si256, _mm256_sub_ps,
        _mm512_add_ps, _mm512_cvtepi32_ps, _mm512_cvtps_epi32, _mm512_cvtusepi32_epi8,
        _mm512_dpbusd_epi32, _mm512_fmadd_ps, _mm512_loadu_epi32, _mm512_loadu_ps,
        _mm512_max_epi32, _mm512_max_ps, _mm512_min_ps, _mm512_set1_epi32, _mm512_set1_ps,
        _mm512_setzero_si512, _mm512_storeu_epi32, _mm512_storeu_ps, _mm512_sub_ps,
    };

    use super::Simd;

    /// 512-bit registers.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx512;

    // SAFETY: only reached where `avx512f` and `avx512vnni` were detected (`dispatch!`).
    unsafe impl Simd for Avx512 {
        const LANES: usize = 16;
        type V = __m512;
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m512 {
            unsafe { _mm512_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            unsafe { _mm512_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn sub(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_sub_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn max(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_max_ps(a, b) }
        }
        type I = __m512i;
        #[inline(always)]
        unsafe fn izero() -> __m512i {
            unsafe { _mm512_setzero_si512() }
        }
        #[inline(always)]
        unsafe fn iload(p: *const i32) -> __m512i {
            unsafe { _mm512_loadu_epi32(p) }
        }
        #[inline(always)]
        unsafe fn istore(p: *mut i32, v: __m512i) {
            unsafe { _mm512_storeu_epi32(p, v) }
        }
        #[inline(always)]
        unsafe fn imax(a: __m512i, b: __m512i) -> __m512i {
            unsafe { _mm512_max_epi32(a, b) }
        }
        #[inline(always)]
        unsafe fn dot4(acc: __m512i, a: u32, w: __m512i) -> __m512i {
            unsafe { _mm512_dpbusd_epi32(acc, _mm512_set1_epi32(a as i32), w) }
        }
        #[inline(always)]
        unsafe fn to_float(a: __m512i) -> __m512 {
            unsafe { _mm512_cvtepi32_ps(a) }
        }
        #[inline(always)]
        unsafe fn store_u8(p: *mut u8, x: __m512) {
            unsafe {
                // Default rounding (MXCSR): to nearest, ties to even. `cvtusepi32` saturates
                // to 255; the `max` brings negatives (and nothing else) to 0 first.
                let rounded = _mm512_cvtps_epi32(_mm512_min_ps(x, _mm512_set1_ps(255.0)));
                let bytes = _mm512_cvtusepi32_epi8(_mm512_max_epi32(rounded, Self::izero()));
                // An unaligned store: any address will do.
                #[allow(clippy::cast_ptr_alignment)]
                _mm_storeu_si128(p.cast::<__m128i>(), bytes);
            }
        }
    }

    /// 256-bit registers with FMA.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx2;

    // SAFETY: only reached where `avx2` and `fma` were detected (`dispatch!`).
    unsafe impl Simd for Avx2 {
        const LANES: usize = 8;
        type V = __m256;
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m256 {
            unsafe { _mm256_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            unsafe { _mm256_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn sub(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_sub_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn max(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_max_ps(a, b) }
        }
        type I = __m256i;
        #[inline(always)]
        unsafe fn izero() -> __m256i {
            unsafe { _mm256_setzero_si256() }
        }
        #[inline(always)]
        unsafe fn iload(p: *const i32) -> __m256i {
            unsafe { _mm256_loadu_si256(p.cast()) }
        }
        #[inline(always)]
        unsafe fn istore(p: *mut i32, v: __m256i) {
            unsafe { _mm256_storeu_si256(p.cast(), v) }
        }
        #[inline(always)]
        unsafe fn imax(a: __m256i, b: __m256i) -> __m256i {
            unsafe { _mm256_max_epi32(a, b) }
        }
        #[inline(always)]
        unsafe fn dot4(acc: __m256i, a: u32, w: __m256i) -> __m256i {
            // No VNNI: bytes 0 and 2 and bytes 1 and 3 of each lane widened to 16 bits
            // (unsigned for `a`, signed for `w`), then two `vpmaddwd`s, which sum pairs into
            // 32 bits without the saturation of `vpmaddubsw`.
            unsafe {
                let a = _mm256_set1_epi32(a as i32);
                let a_even = _mm256_and_si256(a, _mm256_set1_epi32(0x00ff_00ff));
                let a_odd = _mm256_srli_epi16::<8>(a);
                let w_even = _mm256_srai_epi16::<8>(_mm256_slli_epi16::<8>(w));
                let w_odd = _mm256_srai_epi16::<8>(w);
                let even = _mm256_madd_epi16(a_even, w_even);
                let odd = _mm256_madd_epi16(a_odd, w_odd);
                _mm256_add_epi32(acc, _mm256_add_epi32(even, odd))
            }
        }
        #[inline(always)]
        unsafe fn to_float(a: __m256i) -> __m256 {
            unsafe { _mm256_cvtepi32_ps(a) }
        }
        #[inline(always)]
        unsafe fn store_u8(p: *mut u8, x: __m256) {
            unsafe {
                let rounded = _mm256_cvtps_epi32(_mm256_min_ps(x, _mm256_set1_ps(255.0)));
                let mut lanes = [0i32; 8];
                _mm256_storeu_si256(
                    lanes.as_mut_ptr().cast(),
                    _mm256_max_epi32(rounded, Self::izero()),
                );
                for (i, lane) in lanes.into_iter().enumerate() {
                    *p.add(i) = lane as u8;
                }
            }
        }
    }
}

/// Calls the generic kernel `$kernel::<S, consts...>(args)` compiled for `$isa`: inside a
/// `#[target_feature]` function for the x86 instruction sets, so that the whole kernel is
/// compiled with those instructions. Each arm names the kernel's block sizes for that width.
macro_rules! dispatch {
    ($isa:expr, $kernel:ident [$($a512:expr),*] [$($a2:expr),*] [$($a1:expr),*] ($($arg:expr),* $(,)?)) => {{
        match $isa {
            #[cfg(target_arch = "x86_64")]
            $crate::simd::Isa::Avx512 => {
                #[target_feature(enable = "avx512f,avx512vnni")]
                unsafe fn run<F: FnOnce()>(f: F) { f() }
                // SAFETY: `Isa::Avx512` is only in hand where both were detected.
                unsafe { run(|| $kernel::<$crate::simd::Avx512, $($a512),*>($($arg),*)) }
            }
            #[cfg(target_arch = "x86_64")]
            $crate::simd::Isa::Avx2 => {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn run<F: FnOnce()>(f: F) { f() }
                // SAFETY: `Isa::Avx2` is only in hand where `avx2` and `fma` were detected.
                unsafe { run(|| $kernel::<$crate::simd::Avx2, $($a2),*>($($arg),*)) }
            }
            _ => $kernel::<$crate::simd::Scalar, $($a1),*>($($arg),*),
        }
    }};
}
pub(crate) use dispatch;
