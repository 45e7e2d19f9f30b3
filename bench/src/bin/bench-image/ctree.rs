//! A deterministic C source tree for the compile benchmark: `files` modules
//! of `funcs` generated functions each (loops, switches, shifts, calls to a
//! leaf neighbour that -O2 inlines), a `main.c` that prints a checksum
//! of them all, and a Makefile. A fixed seed makes every run's tree, and so
//! the compiler's work, byte-identical; the checksum proves the programs
//! built in each backend compute the same thing.

use std::fmt::Write as _;
use std::path::Path;

/// xorshift64*: tiny, seedable and stable across platforms and releases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One statement on `acc` (and sometimes `buf`, `x`, `i`), with constants
/// from `r`. `callee` is an earlier function of the same module, if any.
fn statement(r: &mut Rng, out: &mut String, callee: Option<&str>) {
    let k = r.next() | 1;
    let s = 1 + r.below(62);
    let j = r.below(16);
    match r.below(8) {
        0 => writeln!(out, "        acc = (acc ^ (x + i)) * 0x{k:x}UL;"),
        1 => writeln!(out, "        acc = (acc << {s}) | (acc >> {});", 64 - s),
        2 => writeln!(out, "        buf[(i + {j}) & 15] += acc ^ 0x{k:x}UL;\n        acc += buf[(acc >> {s}) & 15];"),
        3 => writeln!(
            out,
            "        switch ((acc >> {s}) & 3) {{\n        case 0: acc += 0x{k:x}UL; break;\n        \
             case 1: acc ^= acc >> {}; break;\n        case 2: acc *= 0x{:x}UL; break;\n        \
             default: acc -= x; break;\n        }}",
            1 + r.below(31),
            r.next() | 1
        ),
        4 => writeln!(out, "        if (acc & 0x{:x}UL)\n            acc = ~acc + {j};\n        else\n            acc ^= 0x{k:x}UL;", 1u64 << r.below(64)),
        5 => match callee {
            Some(f) => writeln!(out, "        acc += {f}(acc ^ i, buf[{j}]);"),
            None => writeln!(out, "        acc += (acc >> {s}) * {j};"),
        },
        6 => writeln!(
            out,
            "        for (unsigned k = 0; k < {}; k++)\n            buf[k & 15] = (buf[k & 15] >> 1) ^ (acc + k * 0x{k:x}UL);",
            4 + r.below(12)
        ),
        _ => writeln!(out, "        acc = acc / ((buf[{j}] | 1) & 0xff) + acc % {};", 3 + r.below(1000)),
    }
    .expect("writing to a String cannot fail");
}

/// One module: `funcs` static functions, the odd ones calling the even one
/// before them, and an exported `mod_<m>` that folds them all.
fn module(r: &mut Rng, m: usize, funcs: usize) -> String {
    let mut out = String::from("#include \"gen.h\"\n\n");
    for f in 0..funcs {
        let name = format!("f{m}_{f}");
        // Only odd functions call, and only their even (leaf) neighbour:
        // a chain of calls in loops would make the program's run time
        // exponential in `funcs`.
        let callee = (f % 2 == 1).then(|| format!("f{m}_{}", f - 1));
        writeln!(out, "static unsigned long {name}(unsigned long x, unsigned long y)\n{{").expect("String");
        writeln!(out, "    unsigned long acc = x ^ 0x{:x}UL, buf[16];", r.next()).expect("String");
        writeln!(out, "    for (unsigned i = 0; i < 16; i++)\n        buf[i] = y * (i + {}) + acc;", 1 + r.below(99))
            .expect("String");
        writeln!(out, "    for (unsigned long i = 0; i < {}; i++) {{", 2 + r.below(6)).expect("String");
        for _ in 0..6 + r.below(6) {
            statement(r, &mut out, callee.as_deref());
        }
        out.push_str("    }\n    return acc ^ buf[acc & 15];\n}\n\n");
    }
    writeln!(out, "unsigned long mod_{m}(unsigned long seed)\n{{\n    unsigned long acc = seed;").expect("String");
    for f in 0..funcs {
        writeln!(out, "    acc = f{m}_{f}(acc, {});", r.below(1 << 20)).expect("String");
    }
    out.push_str("    return acc;\n}\n");
    out
}

/// Writes the tree under `dir` (which must exist and be empty).
pub fn write(dir: &Path, seed: u64, files: usize, funcs: usize) -> std::io::Result<()> {
    let mut r = Rng(seed | 1);
    let mut header = String::new();
    let mut main =
        String::from("#include <stdio.h>\n#include \"gen.h\"\n\nint main(void)\n{\n    unsigned long acc = 1;\n");
    let mut objs = Vec::new();
    for m in 0..files {
        writeln!(header, "unsigned long mod_{m}(unsigned long seed);").expect("String");
        writeln!(main, "    acc = mod_{m}(acc) + {m};").expect("String");
        std::fs::write(dir.join(format!("m{m}.c")), module(&mut r, m, funcs))?;
        objs.push(format!("m{m}.o"));
    }
    main.push_str("    printf(\"checksum %016lx\\n\", acc);\n    return 0;\n}\n");
    objs.push("main.o".into());
    std::fs::write(dir.join("gen.h"), header)?;
    std::fs::write(dir.join("main.c"), main)?;
    let makefile = format!(
        "CC = cc\nCFLAGS = -O2 -Wall\nOBJS = {}\n\nprog: $(OBJS)\n\t$(CC) -o $@ $(OBJS)\n\n\
         %.o: %.c gen.h\n\t$(CC) $(CFLAGS) -c -o $@ $<\n",
        objs.join(" ")
    );
    std::fs::write(dir.join("Makefile"), makefile)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_write_is_deterministic() {
        let (a, b) = (tempfile_dir("a"), tempfile_dir("b"));
        write(&a, 7, 3, 4).unwrap();
        write(&b, 7, 3, 4).unwrap();
        for f in ["m0.c", "m2.c", "main.c", "gen.h", "Makefile"] {
            assert_eq!(std::fs::read(a.join(f)).unwrap(), std::fs::read(b.join(f)).unwrap(), "{f}");
        }
        let _ = std::fs::remove_dir_all(a);
        let _ = std::fs::remove_dir_all(b);
    }

    fn tempfile_dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("cordon-ctree-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
