//! The guest agent must be a static binary: it runs as /init with no libc.

mod common;

#[test]
fn test_agent_binary_has_no_elf_interpreter() {
    let bin = std::fs::read(common::static_agent_bin()).unwrap();
    assert_eq!(&bin[..4], b"\x7fELF");
    assert_eq!(bin[4], 2, "expected a 64-bit ELF");
    let u16_at = |o: usize| u16::from_le_bytes([bin[o], bin[o + 1]]) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(bin[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    assert!(phnum > 0);
    for i in 0..phnum {
        let p_type = u32::from_le_bytes(bin[phoff + i * phentsize..][..4].try_into().unwrap());
        assert_ne!(p_type, 3, "PT_INTERP found: the agent is dynamically linked");
    }
}
