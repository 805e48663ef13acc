//! PyTorch checkpoints as `torch.save` writes them: the zip format (torch >= 1.6) and the
//! legacy one, read by a restricted unpickler. It builds only tensors (views of shared
//! storages), dicts, lists, tuples and scalars: nothing in the file is ever executed, and
//! a global outside the few that rebuild tensors is an error that names it, as
//! `torch.load(weights_only=True)` does.

use super::{TensorMap, WeightsError};
use crate::tensor::Tensor;
use std::collections::HashMap;
use std::rc::Rc;

/// Deepest nesting of containers accepted: deeper is no checkpoint, and dropping it
/// would recurse as deep.
const MAX_DEPTH: usize = 256;

/// The legacy format's first pickle: this number.
const LEGACY_MAGIC: u128 = 0x1950a86a20f9469cfc6c;

fn err(msg: impl Into<String>) -> WeightsError {
    WeightsError::Checkpoint(msg.into())
}

/// Element types of torch's typed storages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dtype {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl Dtype {
    fn from_storage(name: &str) -> Option<Dtype> {
        Some(match name {
            "FloatStorage" => Dtype::F32,
            "HalfStorage" => Dtype::F16,
            "BFloat16Storage" => Dtype::BF16,
            "DoubleStorage" => Dtype::F64,
            "LongStorage" => Dtype::I64,
            "IntStorage" => Dtype::I32,
            "ShortStorage" => Dtype::I16,
            "CharStorage" => Dtype::I8,
            "ByteStorage" => Dtype::U8,
            "BoolStorage" => Dtype::Bool,
            _ => return None,
        })
    }
    fn size(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::BF16 | Dtype::I16 => 2,
            Dtype::I8 | Dtype::U8 | Dtype::Bool => 1,
        }
    }
    fn is_float(self) -> bool {
        matches!(self, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64)
    }
}

/// The globals a checkpoint may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildTensorV2,
    RebuildParameter,
    RebuildParameterWithState,
    Storage(Dtype),
}

impl Global {
    fn resolve(module: &str, name: &str) -> Result<Global, WeightsError> {
        Ok(match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor") => Global::RebuildTensor,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch._utils", "_rebuild_parameter_with_state") => {
                Global::RebuildParameterWithState
            }
            ("torch", s) if Dtype::from_storage(s).is_some() => {
                Global::Storage(Dtype::from_storage(s).expect("checked"))
            }
            _ => {
                return Err(err(format!(
                    "the checkpoint names '{module}.{name}', which a weights file never needs: refused, never run (webcnn reads only tensors, dicts, lists and numbers; save `model.state_dict()` rather than the model object)"
                )))
            }
        })
    }
}

/// A storage a tensor views: its key in the archive and its element type.
#[derive(Clone, Debug, PartialEq)]
struct Storage {
    key: String,
    dtype: Dtype,
}

#[derive(Clone, Debug, PartialEq)]
struct TensorRef {
    storage: Storage,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

/// A container's items and its nesting depth.
#[derive(Clone, Debug, PartialEq)]
struct Seq<T> {
    items: Vec<T>,
    depth: usize,
}

fn too_deep(depth: usize) -> Result<(), WeightsError> {
    if depth > MAX_DEPTH {
        return Err(err(format!(
            "containers nest deeper than {MAX_DEPTH} levels"
        )));
    }
    Ok(())
}

impl<T: Clone> Seq<T> {
    fn new(items: Vec<T>, depth: usize) -> Result<Rc<Seq<T>>, WeightsError> {
        too_deep(depth)?;
        Ok(Rc::new(Seq { items, depth }))
    }

    /// Append `items` (whose deepest is `add` levels deep), copying the container first
    /// where the memo shares it.
    fn extend(
        this: &mut Rc<Seq<T>>,
        items: impl IntoIterator<Item = T>,
        add: usize,
    ) -> Result<(), WeightsError> {
        let depth = this.depth.max(add);
        too_deep(depth)?;
        let s = Rc::make_mut(this);
        s.depth = depth;
        s.items.extend(items);
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Tuple(Rc<Seq<Value>>),
    List(Rc<Seq<Value>>),
    /// In insertion order; a repeated key is resolved when read (the last wins).
    Dict(Rc<Seq<(Value, Value)>>),
    Global(Global),
    Storage(Rc<Storage>),
    Tensor(Rc<TensorRef>),
    Mark,
}

impl Value {
    fn depth(&self) -> usize {
        match self {
            Value::Tuple(s) | Value::List(s) => s.depth,
            Value::Dict(s) => s.depth,
            _ => 0,
        }
    }
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "a bool",
            Value::Int(_) => "an int",
            Value::Float(_) => "a float",
            Value::Str(_) => "a string",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "a tuple",
            Value::List(_) => "a list",
            Value::Dict(_) => "a dict",
            Value::Global(_) => "a global",
            Value::Storage(_) => "a storage",
            Value::Tensor(_) => "a tensor",
            Value::Mark => "a mark",
        }
    }
    fn usize(&self, what: &str) -> Result<usize, WeightsError> {
        match self {
            Value::Int(i) if *i >= 0 => Ok(*i as usize),
            Value::Bool(b) => Ok(*b as usize),
            v => Err(err(format!(
                "{what} must be a non-negative int, not {}",
                v.kind()
            ))),
        }
    }
    fn items(&self, what: &str) -> Result<&[Value], WeightsError> {
        match self {
            Value::Tuple(s) | Value::List(s) => Ok(&s.items),
            v => Err(err(format!("{what} must be a tuple, not {}", v.kind()))),
        }
    }
}

fn seq_depth(items: &[Value]) -> usize {
    1 + items.iter().map(Value::depth).max().unwrap_or(0)
}

/// The unpickler's machine: a byte cursor, the stack, marks and the memo.
struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
    /// Items copied because a container was shared (memo and stack) when changed: bounded,
    /// so a crafted pickle cannot make reading quadratic.
    copied: usize,
}

impl<'a> Machine<'a> {
    fn new(data: &'a [u8], pos: usize) -> Self {
        Machine {
            data,
            pos,
            stack: vec![],
            marks: vec![],
            memo: HashMap::new(),
            copied: 0,
        }
    }

    /// Count the items a change to a shared container copies.
    fn copy_budget(&mut self, shared: bool, items: usize) -> Result<(), WeightsError> {
        if shared {
            self.copied += items;
            if self.copied > 16 * self.data.len() + (1 << 20) {
                return Err(err("the pickle rewrites shared containers over and over"));
            }
        }
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WeightsError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| err("the pickle ends early (truncated file?)"))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn byte(&mut self) -> Result<u8, WeightsError> {
        Ok(self.take(1)?[0])
    }
    fn le(&mut self, n: usize) -> Result<u64, WeightsError> {
        Ok(self
            .take(n)?
            .iter()
            .rev()
            .fold(0u64, |a, &b| (a << 8) | b as u64))
    }
    /// A length that must fit in what is left of the input.
    fn len(&mut self, n: usize) -> Result<usize, WeightsError> {
        let l = self.le(n)?;
        if l > (self.data.len() - self.pos) as u64 {
            return Err(err("the pickle ends early (truncated file?)"));
        }
        Ok(l as usize)
    }
    fn line(&mut self) -> Result<&'a str, WeightsError> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| err("the pickle ends early (truncated file?)"))?;
        self.pos += n + 1;
        std::str::from_utf8(&rest[..n]).map_err(|_| err("a text opcode is not UTF-8"))
    }
    fn string(&mut self, n: usize) -> Result<Value, WeightsError> {
        let s = std::str::from_utf8(self.take(n)?).map_err(|_| err("a string is not UTF-8"))?;
        Ok(Value::Str(s.into()))
    }
    fn bytes(&mut self, n: usize) -> Result<Value, WeightsError> {
        Ok(Value::Bytes(self.take(n)?.into()))
    }

    fn pop(&mut self) -> Result<Value, WeightsError> {
        match self.stack.pop() {
            Some(Value::Mark) | None => Err(err("the pickle's stack underflows")),
            Some(v) => Ok(v),
        }
    }
    fn top(&mut self) -> Result<&mut Value, WeightsError> {
        match self.stack.last_mut() {
            Some(Value::Mark) | None => Err(err("the pickle's stack underflows")),
            Some(v) => Ok(v),
        }
    }
    /// The values above the last mark, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Value>, WeightsError> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| err("the pickle closes a mark it never opened"))?;
        if m > self.stack.len() {
            return Err(err("the pickle's stack underflows"));
        }
        let items = self.stack.split_off(m);
        // The mark itself.
        self.stack.pop();
        Ok(items)
    }
    fn push_tuple(&mut self, items: Vec<Value>) -> Result<(), WeightsError> {
        let d = seq_depth(&items);
        self.stack.push(Value::Tuple(Seq::new(items, d)?));
        Ok(())
    }
    fn memo_get(&self, k: u64) -> Result<Value, WeightsError> {
        self.memo
            .get(&k)
            .cloned()
            .ok_or_else(|| err(format!("the pickle reads memo entry {k}, never stored")))
    }
    fn memo_put(&mut self, k: u64) -> Result<(), WeightsError> {
        let v = self.top()?.clone();
        self.memo.insert(k, v);
        Ok(())
    }

    /// Count what changing the container on top of the stack copies, if it is shared.
    fn charge_top(&mut self) -> Result<(), WeightsError> {
        let (shared, n) = match self.top()? {
            Value::List(l) => (Rc::strong_count(l) > 1, l.items.len()),
            Value::Dict(d) => (Rc::strong_count(d) > 1, d.items.len()),
            _ => (false, 0),
        };
        self.copy_budget(shared, n)
    }

    /// Append `items` to the list (or set) on top of the stack.
    fn extend_list(&mut self, items: Vec<Value>) -> Result<(), WeightsError> {
        let add = seq_depth(&items);
        self.charge_top()?;
        match self.top()? {
            Value::List(l) => Seq::extend(l, items, add),
            v => Err(err(format!("the pickle appends to {}", v.kind()))),
        }
    }

    /// Set key-value pairs (`items` alternating) in the dict on top of the stack.
    fn extend_dict(&mut self, items: Vec<Value>) -> Result<(), WeightsError> {
        if !items.len().is_multiple_of(2) {
            return Err(err("the pickle sets a key without a value"));
        }
        let add = seq_depth(&items);
        self.charge_top()?;
        let mut it = items.into_iter();
        let pairs = std::iter::from_fn(move || Some((it.next()?, it.next()?)));
        match self.top()? {
            Value::Dict(d) => Seq::extend(d, pairs, add),
            v => Err(err(format!("the pickle sets an item of {}", v.kind()))),
        }
    }

    /// `f(*args)` for an allowed global.
    fn call(&self, f: Value, args: Value) -> Result<Value, WeightsError> {
        let Value::Global(g) = f else {
            return Err(err(format!("the pickle calls {}", f.kind())));
        };
        let a = args.items("call arguments")?;
        match g {
            Global::OrderedDict => {
                let mut items = vec![];
                if let Some(pairs) = a.first() {
                    for p in pairs.items("OrderedDict's items")? {
                        match p.items("an OrderedDict item")? {
                            [k, v] => items.push((k.clone(), v.clone())),
                            _ => return Err(err("an OrderedDict item is not a pair")),
                        }
                    }
                }
                let d = 1 + items
                    .iter()
                    .map(|(k, v)| k.depth().max(v.depth()))
                    .max()
                    .unwrap_or(0);
                Ok(Value::Dict(Seq::new(items, d)?))
            }
            Global::RebuildTensor | Global::RebuildTensorV2 => {
                let [storage, offset, size, stride, ..] = a else {
                    return Err(err("a tensor is rebuilt from fewer than 4 arguments"));
                };
                let Value::Storage(storage) = storage else {
                    return Err(err(format!(
                        "a tensor is rebuilt from {}, not a storage",
                        storage.kind()
                    )));
                };
                let ints = |v: &Value, what: &str| {
                    v.items(what)?
                        .iter()
                        .map(|d| d.usize(what))
                        .collect::<Result<Vec<_>, _>>()
                };
                let size = ints(size, "a tensor's size")?;
                let stride = ints(stride, "a tensor's stride")?;
                if size.len() != stride.len() {
                    return Err(err(format!(
                        "a tensor has {} sizes and {} strides",
                        size.len(),
                        stride.len()
                    )));
                }
                Ok(Value::Tensor(Rc::new(TensorRef {
                    storage: (**storage).clone(),
                    offset: offset.usize("a tensor's storage offset")?,
                    size,
                    stride,
                })))
            }
            Global::RebuildParameter | Global::RebuildParameterWithState => match a.first() {
                Some(t @ Value::Tensor(_)) => Ok(t.clone()),
                _ => Err(err("a parameter is rebuilt from something not a tensor")),
            },
            Global::Storage(_) => Err(err("the pickle calls a storage type")),
        }
    }

    /// `('storage', StorageType, key, location, numel[, view])`: a storage reference.
    fn persistent(&self, pid: Value) -> Result<Value, WeightsError> {
        let items = pid.items("a persistent id")?;
        match items {
            [Value::Str(tag), Value::Global(Global::Storage(dtype)), key, _location, _numel, rest @ ..]
                if &**tag == "storage" =>
            {
                if let Some(v) = rest.first().filter(|v| **v != Value::None) {
                    return Err(err(format!(
                        "a legacy storage view ({}) is not supported",
                        v.kind()
                    )));
                }
                let key = match key {
                    Value::Str(s) => s.to_string(),
                    Value::Int(i) => i.to_string(),
                    v => return Err(err(format!("a storage key is {}", v.kind()))),
                };
                Ok(Value::Storage(Rc::new(Storage { key, dtype: *dtype })))
            }
            _ => Err(err(
                "a persistent id is not a torch storage ('storage', type, key, location, size)",
            )),
        }
    }

    /// Run until STOP; the value it returns. `self.pos` is then just past the STOP.
    fn run(&mut self) -> Result<Value, WeightsError> {
        loop {
            let op = self.byte()?;
            match op {
                0x80 => {
                    let v = self.byte()?;
                    if v > 5 {
                        return Err(err(format!("pickle protocol {v} is unknown")));
                    }
                }
                0x95 => {
                    self.take(8)?;
                }
                b'.' => return self.pop(),
                b'(' => {
                    self.marks.push(self.stack.len() + 1);
                    self.stack.push(Value::Mark);
                }
                b'0' => {
                    if let Some(Value::Mark) = self.stack.last() {
                        self.pop_mark()?;
                    } else {
                        self.pop()?;
                    }
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = self.le(4)? as u32 as i32;
                    self.stack.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.byte()?;
                    self.stack.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.le(2)?;
                    self.stack.push(Value::Int(v as i64));
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.byte()? as usize
                    } else {
                        self.len(4)?
                    };
                    let b = self.take(n)?;
                    // Python longs of any size; a checkpoint's fit in i64 (wider: an error).
                    let v = match n {
                        0 => 0,
                        1..=8 => {
                            let mut buf = if b[n - 1] & 0x80 != 0 {
                                [0xff; 8]
                            } else {
                                [0; 8]
                            };
                            buf[..n].copy_from_slice(b);
                            i64::from_le_bytes(buf)
                        }
                        _ if LEGACY_MAGIC.to_le_bytes().starts_with(b)
                            && b.len() <= 16
                            && self.stack.is_empty() =>
                        {
                            // The legacy format's magic number: a marker, returned as -1.
                            -1
                        }
                        _ => return Err(err("an int is wider than 64 bits")),
                    };
                    self.stack.push(Value::Int(v));
                }
                b'I' | b'L' => {
                    let l = self.line()?.trim_end_matches('L');
                    let v = match l {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        _ => Value::Int(l.parse().map_err(|_| err("a text int is not a number"))?),
                    };
                    self.stack.push(v);
                }
                b'G' => {
                    let b = self.take(8)?;
                    self.stack.push(Value::Float(f64::from_be_bytes(
                        b.try_into().expect("8 bytes"),
                    )));
                }
                b'F' => {
                    let l = self.line()?;
                    let v = l.parse().map_err(|_| err("a text float is not a number"))?;
                    self.stack.push(Value::Float(v));
                }
                b'X' => {
                    let n = self.len(4)?;
                    let v = self.string(n)?;
                    self.stack.push(v);
                }
                0x8c => {
                    let n = self.byte()? as usize;
                    let v = self.string(n)?;
                    self.stack.push(v);
                }
                0x8d => {
                    let n = self.len(8)?;
                    let v = self.string(n)?;
                    self.stack.push(v);
                }
                b'V' => {
                    let l = self.line()?;
                    self.stack.push(Value::Str(l.into()));
                }
                b'T' | b'B' => {
                    let n = self.len(4)?;
                    let v = self.bytes(n)?;
                    self.stack.push(v);
                }
                b'U' | b'C' => {
                    let n = self.byte()? as usize;
                    let v = self.bytes(n)?;
                    self.stack.push(v);
                }
                0x8e | 0x96 => {
                    let n = self.len(8)?;
                    let v = self.bytes(n)?;
                    self.stack.push(v);
                }
                b'}' => self.stack.push(Value::Dict(Seq::new(vec![], 1)?)),
                b']' | 0x8f => self.stack.push(Value::List(Seq::new(vec![], 1)?)),
                b')' => self.push_tuple(vec![])?,
                b'd' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Dict(Seq::new(vec![], 1)?));
                    self.extend_dict(items)?;
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    let d = seq_depth(&items);
                    self.stack.push(Value::List(Seq::new(items, d)?));
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    let d = seq_depth(&items);
                    self.stack.push(Value::List(Seq::new(items, d)?));
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_tuple(items)?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n
                        || self.stack[self.stack.len() - n..].contains(&Value::Mark)
                    {
                        return Err(err("the pickle's stack underflows"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push_tuple(items)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.extend_list(vec![v])?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    self.extend_list(items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.extend_dict(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.extend_dict(items)?;
                }
                b'q' => {
                    let k = self.byte()? as u64;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.le(4)?;
                    self.memo_put(k)?;
                }
                b'p' => {
                    let k = self
                        .line()?
                        .parse()
                        .map_err(|_| err("a memo key is not a number"))?;
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k)?;
                }
                b'h' => {
                    let k = self.byte()? as u64;
                    let v = self.memo_get(k)?;
                    self.stack.push(v);
                }
                b'j' => {
                    let k = self.le(4)?;
                    let v = self.memo_get(k)?;
                    self.stack.push(v);
                }
                b'g' => {
                    let k = self
                        .line()?
                        .parse()
                        .map_err(|_| err("a memo key is not a number"))?;
                    let v = self.memo_get(k)?;
                    self.stack.push(v);
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(Global::resolve(module, name)?));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(m), Value::Str(n)) = (&module, &name) else {
                        return Err(err("a global's module and name are not strings"));
                    };
                    self.stack.push(Value::Global(Global::resolve(m, n)?));
                }
                b'R' => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let v = self.call(f, args)?;
                    self.stack.push(v);
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.call(cls, args)?;
                    self.stack.push(v);
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.call(cls, args)?;
                    self.stack.push(v);
                }
                b'b' => {
                    // An object's state (an OrderedDict's `_metadata`, a parameter's
                    // hooks): nothing a weight needs.
                    self.pop()?;
                    self.top()?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent(pid)?;
                    self.stack.push(v);
                }
                b'i' | b'o' => {
                    return Err(err(
                        "the pickle builds a class instance: refused, never run (save `model.state_dict()`)",
                    ))
                }
                other => {
                    return Err(err(format!(
                        "pickle opcode 0x{other:02x} at byte {} is not supported",
                        self.pos - 1
                    )))
                }
            }
        }
    }
}

/// Unpickle one object starting at `pos`; the object and the position after its STOP.
fn unpickle(data: &[u8], pos: usize) -> Result<(Value, usize), WeightsError> {
    let mut m = Machine::new(data, pos);
    let v = m.run()?;
    Ok((v, m.pos))
}

/// Whether `bytes` look like a PyTorch checkpoint (a zip archive, or a legacy pickle).
pub fn looks_like(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(&[0x80, 0x02, 0x8a])
}

/// Read a checkpoint's state dict: its tensors as f32 (`num_batches_tracked` and other
/// integer buffers left out), the usual wrappers unwrapped. Also returns notices that say
/// what was unwrapped.
pub fn load(bytes: &[u8]) -> Result<(TensorMap, Vec<String>), WeightsError> {
    if bytes.starts_with(b"PK\x03\x04") {
        load_zip(bytes)
    } else if bytes.starts_with(&[0x80, 0x02, 0x8a]) {
        load_legacy(bytes)
    } else {
        Err(err(
            "not a PyTorch checkpoint (neither a zip archive nor a legacy pickle)",
        ))
    }
}

fn load_zip(bytes: &[u8]) -> Result<(TensorMap, Vec<String>), WeightsError> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| err(format!("a zip archive that cannot be read: {e}")))?;
    // Entries are stored uncompressed; each is a slice of the file, read in place.
    let mut all: Vec<(String, &[u8])> = vec![];
    for i in 0..zip.len() {
        let f = zip
            .by_index_raw(i)
            .map_err(|e| err(format!("zip entry {i}: {e}")))?;
        let name = f
            .name()
            .map_err(|e| err(format!("zip entry {i}: {e}")))?
            .to_string();
        if f.compression() != zip::CompressionMethod::Stored {
            return Err(err(format!(
                "zip entry '{name}' is compressed ({}); torch.save stores entries as they are",
                f.compression()
            )));
        }
        let start = f
            .data_start()
            .ok_or_else(|| err("a zip entry's data cannot be found"))?;
        let end = start
            .checked_add(f.size())
            .filter(|&e| e <= bytes.len() as u64)
            .ok_or_else(|| err(format!("zip entry '{name}' ends past the file")))?;
        all.push((name, &bytes[start as usize..end as usize]));
    }
    let pkl = all
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
        .min_by_key(|n| n.len())
        .ok_or_else(|| err("a zip archive without data.pkl: not written by torch.save"))?;
    let prefix = pkl[..pkl.len() - "data.pkl".len()].to_string();
    let entries: HashMap<String, &[u8]> = all
        .iter()
        .filter_map(|(n, d)| Some((n.strip_prefix(&prefix)?.to_string(), *d)))
        .collect();
    if let Some(order) = entries.get("byteorder") {
        if *order != b"little" {
            return Err(err("a big-endian checkpoint is not supported"));
        }
    }
    let (root, _) = unpickle(entries["data.pkl"], 0)?;
    tensors(root, |key| {
        entries
            .get(&format!("data/{key}"))
            .copied()
            .ok_or_else(|| err(format!("storage '{key}' is missing from the archive")))
    })
}

fn load_legacy(bytes: &[u8]) -> Result<(TensorMap, Vec<String>), WeightsError> {
    let (magic, pos) = unpickle(bytes, 0)?;
    if magic != Value::Int(-1) {
        return Err(err(
            "a pickle, but not a torch.save checkpoint (no magic number)",
        ));
    }
    let (_protocol, pos) = unpickle(bytes, pos)?;
    let (_sys_info, pos) = unpickle(bytes, pos)?;
    let (root, pos) = unpickle(bytes, pos)?;
    let (keys, mut pos) = unpickle(bytes, pos)?;
    // The storages follow in the order of `keys`: an i64 element count, then the data.
    // Their element sizes come from the types the main pickle gave them.
    let mut dtypes = HashMap::new();
    collect_storages(&root, &mut dtypes, &mut std::collections::HashSet::new());
    let mut blobs: HashMap<String, &[u8]> = HashMap::new();
    for k in keys.items("the legacy storage keys")? {
        let Value::Str(k) = k else {
            return Err(err("a legacy storage key is not a string"));
        };
        let n = bytes
            .get(pos..pos + 8)
            .ok_or_else(|| err("the legacy checkpoint ends early (truncated file?)"))?;
        let n = u64::from_le_bytes(n.try_into().expect("8 bytes"));
        // Storages no tensor names (none in torch's files) have no known size: stop.
        let Some(dtype) = dtypes.get(&**k) else {
            return Err(err(format!("legacy storage '{k}' is used by no tensor")));
        };
        let len = n
            .checked_mul(dtype.size() as u64)
            .and_then(|l| (pos as u64 + 8).checked_add(l))
            .filter(|&e| e <= bytes.len() as u64)
            .ok_or_else(|| err("the legacy checkpoint ends early (truncated file?)"))?;
        blobs.insert(k.to_string(), &bytes[pos + 8..len as usize]);
        pos = len as usize;
    }
    tensors(root, |key| {
        blobs
            .get(key)
            .copied()
            .ok_or_else(|| err(format!("storage '{key}' is missing from the checkpoint")))
    })
}

/// Every storage the tensors of a state dict (or its wrappers) view, by key. Containers
/// shared through the memo are visited once: a crafted pickle nesting one list twice per
/// level must not take 2^depth steps.
fn collect_storages(
    v: &Value,
    out: &mut HashMap<String, Dtype>,
    seen: &mut std::collections::HashSet<*const ()>,
) {
    match v {
        Value::Tensor(t) => {
            out.insert(t.storage.key.clone(), t.storage.dtype);
        }
        Value::Dict(d) if seen.insert(Rc::as_ptr(d) as *const ()) => d
            .items
            .iter()
            .for_each(|(_, v)| collect_storages(v, out, seen)),
        Value::List(s) | Value::Tuple(s) if seen.insert(Rc::as_ptr(s) as *const ()) => {
            s.items.iter().for_each(|v| collect_storages(v, out, seen))
        }
        _ => {}
    }
}

/// A dict's entries with string keys, the last of repeated keys kept.
fn str_entries(d: &Seq<(Value, Value)>) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = vec![];
    let mut index: HashMap<String, usize> = HashMap::new();
    for (k, v) in &d.items {
        let k = match k {
            Value::Str(s) => s.to_string(),
            Value::Int(i) => i.to_string(),
            _ => continue,
        };
        match index.get(&k) {
            Some(&i) => {
                let slot: &mut (String, Value) = &mut out[i];
                slot.1 = v.clone();
            }
            None => {
                index.insert(k.clone(), out.len());
                out.push((k, v.clone()));
            }
        }
    }
    out
}

fn is_state_dict(entries: &[(String, Value)]) -> bool {
    !entries.is_empty() && entries.iter().all(|(_, v)| matches!(v, Value::Tensor(_)))
}

/// The state dict inside a checkpoint: the root itself, or its `state_dict`, `model`,
/// `model_state_dict`, `net` or `module` entry (up to two levels), keys stripped of
/// `module.` (DataParallel / DDP) and `_orig_mod.` (torch.compile).
fn state_dict(
    root: Value,
    notices: &mut Vec<String>,
) -> Result<Vec<(String, Value)>, WeightsError> {
    const WRAPPERS: [&str; 5] = ["state_dict", "model_state_dict", "model", "net", "module"];
    let Value::Dict(d) = root else {
        return Err(err(format!(
            "the checkpoint holds {}, not a dict of tensors (a state dict)",
            root.kind()
        )));
    };
    let mut entries = str_entries(&d);
    let mut path = vec![];
    for _ in 0..2 {
        if is_state_dict(&entries) {
            break;
        }
        let Some((name, inner)) = WRAPPERS.iter().find_map(|w| {
            entries.iter().find_map(|(k, v)| match v {
                Value::Dict(d) if k == w => Some((k.clone(), d.clone())),
                _ => None,
            })
        }) else {
            break;
        };
        let others: Vec<&str> = entries
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| *k != name)
            .collect();
        path.push(format!(
            "'{name}'{}",
            if others.is_empty() {
                String::new()
            } else {
                format!(" (beside {})", others.join(", "))
            }
        ));
        entries = str_entries(&inner);
    }
    if !path.is_empty() {
        notices.push(format!(
            "the checkpoint wraps its weights: read its entry {}",
            path.join(" then ")
        ));
    }
    if let Some((k, v)) = entries.iter().find(|(_, v)| !matches!(v, Value::Tensor(_))) {
        let keys: Vec<&str> = entries.iter().take(8).map(|(k, _)| k.as_str()).collect();
        return Err(err(format!(
            "the checkpoint's entry '{k}' is {}, not a tensor: no state dict found (its keys: {}{})",
            v.kind(),
            keys.join(", "),
            if entries.len() > 8 { ", ..." } else { "" }
        )));
    }
    if entries.is_empty() {
        return Err(err("the checkpoint holds no tensors"));
    }
    while let Some(p) = ["module.", "_orig_mod."]
        .into_iter()
        .find(|p| entries.iter().all(|(k, _)| k.starts_with(p)))
    {
        for (k, _) in entries.iter_mut() {
            *k = k[p.len()..].to_string();
        }
        notices.push(format!(
            "stripped the prefix '{p}' from every key ({})",
            if p == "module." {
                "saved from DataParallel / DistributedDataParallel"
            } else {
                "saved from a torch.compile model"
            }
        ));
    }
    Ok(entries)
}

/// The float tensors of the checkpoint's state dict, as f32 arrays.
fn tensors<'a>(
    root: Value,
    storage: impl Fn(&str) -> Result<&'a [u8], WeightsError>,
) -> Result<(TensorMap, Vec<String>), WeightsError> {
    let mut notices = vec![];
    let entries = state_dict(root, &mut notices)?;
    let mut out = TensorMap::new();
    for (key, v) in entries {
        let Value::Tensor(t) = v else {
            unreachable!("state_dict checks every entry")
        };
        if !t.storage.dtype.is_float() {
            if key.ends_with("num_batches_tracked") {
                continue;
            }
            return Err(WeightsError::UnsupportedDtype {
                key,
                dtype: format!("{:?}", t.storage.dtype),
            });
        }
        let data = storage(&t.storage.key)?;
        let values = gather(&t, data).map_err(|e| err(format!("tensor '{key}': {e}")))?;
        let tensor =
            Tensor::new(t.size.clone(), values).map_err(|e| err(format!("tensor '{key}': {e}")))?;
        out.insert(key, tensor);
    }
    Ok((out, notices))
}

/// The view's elements in row-major order, converted to f32; every index checked
/// against the storage.
fn gather(t: &TensorRef, data: &[u8]) -> Result<Vec<f32>, String> {
    let es = t.storage.dtype.size();
    let elems = data.len() / es;
    let count = t
        .size
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("its size overflows")?;
    if count == 0 {
        return Ok(vec![]);
    }
    // A view reading elements more than once (stride 0) could turn a small file into any
    // amount of memory: no state dict needs one.
    if count > elems {
        return Err(format!(
            "its {count} elements are more than its storage's {elems}"
        ));
    }
    // The furthest element the view reaches.
    let last = t
        .size
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |a, (&d, &s)| {
            (d - 1).checked_mul(s).and_then(|x| a.checked_add(x))
        })
        .ok_or("its strides overflow")?;
    if last >= elems {
        return Err(format!(
            "its view reaches element {last} of a storage of {elems}"
        ));
    }
    let read = |i: usize| -> f32 {
        let b = &data[i * es..(i + 1) * es];
        match t.storage.dtype {
            Dtype::F32 => f32::from_le_bytes(b.try_into().expect("4 bytes")),
            Dtype::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
            Dtype::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            Dtype::F64 => f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32,
            _ => unreachable!("float storages only"),
        }
    };
    // Contiguous row-major strides: one run.
    let mut contiguous = true;
    let mut expect = 1;
    for (&d, &s) in t.size.iter().zip(&t.stride).rev() {
        if d != 1 && s != expect {
            contiguous = false;
        }
        expect *= d;
    }
    if contiguous {
        return Ok((t.offset..t.offset + count).map(read).collect());
    }
    let mut out = Vec::with_capacity(count);
    let mut idx = vec![0usize; t.size.len()];
    for _ in 0..count {
        let at = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
        out.push(read(at));
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < t.size[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The legacy format's three leading pickles, then `root`, then an empty key list.
    fn legacy(root: &[u8]) -> Vec<u8> {
        let mut b = vec![0x80, 2, 0x8a, 10];
        b.extend(&LEGACY_MAGIC.to_le_bytes()[..10]);
        b.push(b'.');
        b.extend([0x80, 2, b'M', 0xe9, 0x03, b'.']);
        b.extend([0x80, 2, b'}', b'.']);
        b.extend([0x80, 2]);
        b.extend(root);
        b.extend([b'.', 0x80, 2, b']', b'.']);
        b
    }

    #[test]
    fn a_pickle_sharing_one_list_at_every_level_is_walked_once() {
        // Each level a pair of the level below, through the memo: 2^200 paths, 200 lists.
        let mut p = vec![b']', b'q', 0];
        for _ in 0..200 {
            p.extend([b'h', 0, b'h', 0, 0x86, b'q', 0]);
        }
        let t = std::time::Instant::now();
        let e = load(&legacy(&p)).unwrap_err();
        assert!(e.to_string().contains("not a dict"), "{e}");
        assert!(t.elapsed().as_secs() < 5, "{:?}", t.elapsed());
        // Past the depth bound: refused, not recursed into.
        let mut deep = vec![b')'];
        deep.extend(std::iter::repeat_n(0x85, 300));
        let e = load(&legacy(&deep)).unwrap_err();
        assert!(e.to_string().contains("nest deeper"), "{e}");
    }

    #[test]
    fn rewriting_a_shared_list_over_and_over_is_stopped() {
        // Put the list in the memo, append, put it again, append...: each append copies.
        let mut p = vec![b']'];
        for _ in 0..100_000 {
            p.extend([b'q', 0, b'K', 1, b'a']);
        }
        let t = std::time::Instant::now();
        let e = load(&legacy(&p)).unwrap_err();
        assert!(e.to_string().contains("over and over"), "{e}");
        assert!(t.elapsed().as_secs() < 5, "{:?}", t.elapsed());
    }
}
