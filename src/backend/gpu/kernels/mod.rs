//! The kernel families, one Rust module per WGSL file in `shaders/`.
//!
//! Each module owns everything both sides of a dispatch must agree on, written once:
//! - its uniform `Params`, a `#[repr(C)]` struct whose WGSL declaration is generated from
//!   the Rust one ([`params!`]);
//! - its storage buffers, in binding order, as a struct of [`Bind`]s whose WGSL
//!   declarations and bind-group layout are generated from it ([`buffers!`]), arrays of
//!   the storage type `S` ([`Precision`]);
//! - its tile and workgroup constants, injected into the WGSL as a generated header;
//! - its entry points, their dispatch grids and what each supports.
//!
//! The `.wgsl` files hold only code: [`Family::source`] prepends the header, then
//! `shaders/common.wgsl`, to the file.

pub(crate) mod conv;
pub(crate) mod elementwise;
pub(crate) mod linear;
pub(crate) mod norm;
pub(crate) mod pool;

use std::fmt::Write;

/// Invocations per workgroup of the one-thread-per-element kernels (pool, norm,
/// elementwise): `WG` in the WGSL.
pub(crate) const WG: usize = 64;

/// A range of a buffer bound to one binding.
#[derive(Clone, Debug)]
pub(crate) struct Bind {
    pub buf: wgpu::Buffer,
    pub offset: u64,
    pub size: u64,
}

impl Bind {
    pub fn whole(buf: &wgpu::Buffer) -> Bind {
        Bind {
            buf: buf.clone(),
            offset: 0,
            size: buf.size(),
        }
    }

    /// The first `len` values of `elem` bytes of `buf`, in whole 4-byte words.
    pub fn first(buf: &wgpu::Buffer, len: usize, elem: usize) -> Bind {
        Bind {
            buf: buf.clone(),
            offset: 0,
            size: (len.max(1) * elem).next_multiple_of(4) as u64,
        }
    }
}

/// How a kernel uses a storage buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    ReadWrite,
}

/// A uniform struct with its generated WGSL twin.
pub(crate) trait Uniform: bytemuck::Pod {
    /// `struct Params { .. }` in WGSL, field for field.
    const WGSL: &'static str;
}

/// A family's storage buffers in binding order (binding 0 is the uniform `prm`).
pub(crate) trait Buffers {
    /// Each buffer's WGSL name and access, in binding order.
    const DECL: &'static [(&'static str, Access, &'static str)];
    fn into_binds(self) -> Vec<Bind>;
}

/// Declares a family's uniform struct: Rust fields of `u32` / `f32`, in WGSL order. The
/// struct must fill whole 16-byte rows (uniform layout): pad it with `_padN` fields.
macro_rules! params {
    ($(#[$m:meta])* struct $name:ident { $($f:ident: $t:ident),* $(,)? }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
        pub(crate) struct $name {
            $(pub $f: $t),*
        }
        impl $crate::backend::gpu::kernels::Uniform for $name {
            const WGSL: &'static str = concat!(
                "struct Params {\n",
                $("    ", stringify!($f), ": ", stringify!($t), ",\n",)*
                "}\n"
            );
        }
        const _: () = assert!(
            std::mem::size_of::<$name>() % 16 == 0,
            "a uniform struct fills whole 16-byte rows"
        );
    };
}

/// Declares a family's storage buffers, `name: Read | ReadWrite`, in binding order
/// (bindings 1, 2, ..). A buffer is an `array<S>` (the storage type) unless a WGSL element
/// type follows its access (`x4: Read vec4<S>`: the same data as whole vectors).
macro_rules! buffers {
    ($(#[$m:meta])* struct $name:ident { $($f:ident: $acc:ident $($ty:ident<$inner:ident>)?),* $(,)? }) => {
        $(#[$m])*
        pub(crate) struct $name {
            $(pub $f: $crate::backend::gpu::kernels::Bind),*
        }
        impl $crate::backend::gpu::kernels::Buffers for $name {
            const DECL: &'static [(&'static str, $crate::backend::gpu::kernels::Access, &'static str)] =
                &[$((
                    stringify!($f),
                    $crate::backend::gpu::kernels::Access::$acc,
                    $crate::backend::gpu::kernels::elem_type(&[$(concat!(stringify!($ty), "<", stringify!($inner), ">"))?]),
                )),*];
            fn into_binds(self) -> Vec<$crate::backend::gpu::kernels::Bind> {
                vec![$(self.$f),*]
            }
        }
    };
}

/// The element type a [`buffers!`] declaration gives, the storage type `S` by default.
pub(crate) const fn elem_type(given: &[&'static str]) -> &'static str {
    match given {
        [t] => t,
        _ => "S",
    }
}

pub use crate::backend::Precision;

pub(crate) use {buffers, params};

/// One WGSL file and what its generated header declares.
pub(crate) struct Family {
    /// For labels and errors.
    pub name: &'static str,
    /// The file's code.
    pub body: &'static str,
    /// [`Uniform::WGSL`] of its params, and their size in bytes.
    pub params: &'static str,
    pub params_size: u64,
    /// [`Buffers::DECL`] of its buffers.
    pub buffers: &'static [(&'static str, Access, &'static str)],
    /// Constants the code uses, as `const NAME: u32`.
    pub consts: &'static [(&'static str, usize)],
}

/// A family typed by its params and buffers: a dispatch is queued with the family's own
/// [`Uniform`] and [`Buffers`] or does not compile. The header's declarations come from
/// the same two types.
pub(crate) struct Shader<P, B> {
    pub family: Family,
    types: std::marker::PhantomData<fn(&P, B)>,
}

impl<P: Uniform, B: Buffers> Shader<P, B> {
    pub const fn new(
        name: &'static str,
        body: &'static str,
        consts: &'static [(&'static str, usize)],
    ) -> Self {
        Shader {
            family: Family {
                name,
                body,
                params: P::WGSL,
                params_size: std::mem::size_of::<P>() as u64,
                buffers: B::DECL,
                consts,
            },
            types: std::marker::PhantomData,
        }
    }
}

impl Family {
    /// The module's WGSL: generated header, the shared helpers, then the file. Storage
    /// holds `S` (f32, or f16 at half precision); the code computes in f32, converting
    /// as it loads and stores.
    pub fn source(&self, precision: Precision) -> String {
        let mut s = format!(
            "// Generated from src/backend/gpu/kernels/{}.rs.\n",
            self.name
        );
        // An f32 kept in storage of S: itself, or as the sum of two f16 (22 of its 24 bits;
        // split convolutions' partial sums keep about f32 precision in f16 models). A bit
        // cast to two f16 would be exact, but naga rejects it.
        s.push_str(match precision {
            Precision::F32 => {
                "alias S = f32;\nconst F32_SLOTS: u32 = 1u;\n\
                 fn f32_pack(v: f32) -> vec2<S> { return vec2<S>(v, 0.0); }\n\
                 fn f32_unpack(v: vec2<S>) -> f32 { return v.x; }\n"
            }
            Precision::F16 => {
                "enable f16;\nalias S = f16;\nconst F32_SLOTS: u32 = 2u;\n\
                 fn f32_pack(v: f32) -> vec2<S> { let hi = f16(v); return vec2<S>(hi, f16(v - f32(hi))); }\n\
                 fn f32_unpack(v: vec2<S>) -> f32 { return f32(v.x) + f32(v.y); }\n"
            }
        });
        for (name, v) in self.consts.iter().chain([&("WG", WG)]) {
            writeln!(s, "const {name}: u32 = {v}u;").unwrap();
        }
        s.push_str(self.params);
        s.push_str("@group(0) @binding(0) var<uniform> prm: Params;\n");
        for (i, (name, access, ty)) in self.buffers.iter().enumerate() {
            let access = match access {
                Access::Read => "read",
                Access::ReadWrite => "read_write",
            };
            writeln!(
                s,
                "@group(0) @binding({}) var<storage, {access}> {name}: array<{ty}>;",
                i + 1
            )
            .unwrap();
        }
        s.push_str(include_str!("../../../../shaders/common.wgsl"));
        s.push_str(self.body);
        s
    }

    /// The bind-group layout every entry point of the family shares: the uniform at 0,
    /// then the buffers.
    pub fn layout_entries(&self) -> Vec<wgpu::BindGroupLayoutEntry> {
        let uniform = wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: wgpu::BufferSize::new(self.params_size),
            },
            count: None,
        };
        let storage =
            self.buffers
                .iter()
                .enumerate()
                .map(|(i, (_, access, _))| wgpu::BindGroupLayoutEntry {
                    binding: i as u32 + 1,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage {
                            read_only: *access == Access::Read,
                        },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                });
        std::iter::once(uniform).chain(storage).collect()
    }
}

/// Words `p` takes as uniform data.
pub(crate) fn words<P: Uniform>(p: &P) -> Vec<u32> {
    bytemuck::cast_slice(bytemuck::bytes_of(p)).to_vec()
}

/// `count` workgroups as a grid, folded into 2D past `max` per dimension; the kernels
/// rebuild the flat index from `num_workgroups`.
pub(crate) fn fold(count: usize, max: usize) -> Option<[usize; 3]> {
    let x = count.clamp(1, max);
    let y = count.div_ceil(x);
    (y <= max).then_some([x, y, 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAMILIES: [&Family; 5] = [
        &conv::FAMILY.family,
        &linear::FAMILY.family,
        &pool::FAMILY.family,
        &norm::FAMILY.family,
        &elementwise::FAMILY.family,
    ];

    #[test]
    fn every_family_parses_as_wgsl_and_declares_its_entries() {
        let caps = |p| match p {
            Precision::F32 => naga::valid::Capabilities::empty(),
            Precision::F16 => naga::valid::Capabilities::SHADER_FLOAT16,
        };
        for (f, p) in FAMILIES
            .into_iter()
            .flat_map(|f| [(f, Precision::F32), (f, Precision::F16)])
        {
            let src = f.source(p);
            let what = format!("{} ({p:?})", f.name);
            let module = naga::front::wgsl::parse_str(&src)
                .unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(&src)));
            let mut v = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps(p));
            v.validate(&module)
                .unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(&src)));
            assert!(!module.entry_points.is_empty(), "{what}: no entry point");
        }
    }

    #[test]
    fn the_generated_params_match_the_rust_layout() {
        params! {
            struct Probe { a: u32, b: f32, c: u32, _pad: u32 }
        }
        assert_eq!(
            Probe::WGSL,
            "struct Params {\n    a: u32,\n    b: f32,\n    c: u32,\n    _pad: u32,\n}\n"
        );
        let p = Probe {
            a: 1,
            b: 2.0,
            c: 3,
            _pad: 0,
        };
        assert_eq!(words(&p), vec![1, 2f32.to_bits(), 3, 0]);
    }

    #[test]
    fn grids_fold_past_the_limit_and_refuse_beyond_it() {
        assert_eq!(fold(10, 65535), Some([10, 1, 1]));
        assert_eq!(fold(0, 65535), Some([1, 0, 1])); // nothing to run
        assert_eq!(fold(70000, 65535), Some([65535, 2, 1]));
        assert_eq!(fold(5, 2), None);
    }
}
