//! The state programs' recursion protocol on one CPU: which transitions the primary took, so the
//! backup handles exactly those the kernel skipped the primary for. The kernel side keeps one
//! [`Handled`] per CPU (a per-CPU map) and calls [`record`], [`begin`], [`take`] and [`done`]; the
//! host tests below replay every nesting the kernel allows against the same code, with socket
//! addresses and state pairs that recur as the kernel's do.
//!
//! The kernel runs each raw tracepoint program at most once per CPU at a time and skips a run
//! that would nest (a state change in softirq interrupting a program run in process context). The
//! primary is attached first and calls [`record`] on entry; the backup is attached second, calls
//! [`begin`] on entry, [`take`] for the same transition, and [`done`] last:
//! - While a backup runs ([`begin`] to [`done`]), the primary notes nothing: a transition nesting
//!   there has its backup skipped by the kernel, so its note would never be taken out. Such a
//!   stale note once matched a later, skipped transition of the next socket at the same address
//!   with the same states: that transition was lost, and the pending notes written after the
//!   stale one were cleared with it and handled twice. The two hid each other in the loss count;
//!   a trace checked event by event against every socket's life found a few per million.
//! - A note names the socket's address and a [`key`]: states, ports and remote address, so the
//!   next socket at a recycled address does not match an old note.
//! - The note is there: the primary had the transition. Take the newest matching note out.
//! - No note, and fewer than [`SLOTS`] notes written since the last backup ended: the kernel
//!   skipped the primary (the transition nested inside the primary's run). The backup handles it.
//! - No note, and [`SLOTS`] or more written since: a burst nested just before this backup ran and
//!   pushed the note out (a note is only overwritten when every slot is taken, oldest first). The
//!   primary had it.
//!
//! What is left are the kernel's own instructions around the backup's body (its recursion guard
//! is taken before [`begin`] and released after [`done`]): a transition nesting exactly there
//! leaves a stale note. A stale note can only make the backup take a skipped transition for
//! handled, which the loss count (`primary misses - recovered`) reports; it never makes one be
//! handled twice, since a take removes only the note it matched.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

/// Notes kept per CPU.
pub const SLOTS: usize = 8;

/// One CPU's notes. Zeroed: empty.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Handled {
    /// Notes written so far: the next note's sequence number.
    pub next: u64,
    /// `next` when a backup last ended.
    pub seen: u64,
    /// Non-zero while a backup runs on this CPU.
    pub in_backup: u64,
    pub slots: [Slot; SLOTS],
}
const _: () = assert!(core::mem::size_of::<Handled>() == 24 + 24 * SLOTS);

/// One note: the socket (0: none), the transition's [`key`], and when it was written.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    pub sk: u64,
    pub key: u64,
    pub seq: u64,
}

/// What the backup does with a transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The primary had it.
    Handled,
    /// The kernel skipped the primary for it: handle it here.
    Recover,
}

/// What tells one transition of a socket address from another: the states, and the socket's
/// ports (`skc_portpair`) and IPv4 remote address (`skc_daddr`, folded to 16 bits), so that the
/// next socket at a recycled address, with other ports, does not match an old note.
#[inline(always)]
pub fn key(old: u32, new: u32, ports: u32, raddr: u32) -> u64 {
    (ports as u64) << 32 | ((raddr ^ raddr >> 16) as u64 & 0xffff) << 16 | ((old & 0xff) << 8 | (new & 0xff)) as u64
}

/// The primary's first step: note the transition (`sk`, `key`) in a free slot, or over the oldest note;
/// nothing while a backup runs on this CPU (see the module documentation).
///
/// # Safety
/// `h` points to this CPU's `Handled`. Only code on this CPU touches it; a backup may interrupt
/// these stores (the socket is cleared first and set last, so a half-written note matches nothing).
#[inline(always)]
pub unsafe fn record(h: *mut Handled, sk: u64, key: u64) {
    unsafe {
        if read_volatile(addr_of!((*h).in_backup)) != 0 {
            return;
        }
        let seq = read_volatile(addr_of!((*h).next));
        let (mut pick, mut oldest) = (0, u64::MAX);
        let mut i = 0;
        while i < SLOTS {
            let slot = addr_of!((*h).slots[i]);
            if read_volatile(addr_of!((*slot).sk)) == 0 {
                pick = i;
                break;
            }
            let at = read_volatile(addr_of!((*slot).seq));
            if at < oldest {
                (pick, oldest) = (i, at);
            }
            i += 1;
        }
        let slot = addr_of_mut!((*h).slots[pick]);
        write_volatile(addr_of_mut!((*slot).sk), 0);
        write_volatile(addr_of_mut!((*slot).key), key);
        write_volatile(addr_of_mut!((*slot).seq), seq);
        write_volatile(addr_of_mut!((*slot).sk), sk);
        write_volatile(addr_of_mut!((*h).next), seq.wrapping_add(1));
    }
}

/// The backup's first step.
///
/// # Safety
/// As for [`record`].
#[inline(always)]
pub unsafe fn begin(h: *mut Handled) {
    unsafe { write_volatile(addr_of_mut!((*h).in_backup), 1) };
}

/// The backup's test for the transition (`sk`, `key`): see the module documentation.
///
/// # Safety
/// As for [`record`].
#[inline(always)]
pub unsafe fn take(h: *mut Handled, sk: u64, key: u64) -> Verdict {
    unsafe {
        let next = read_volatile(addr_of!((*h).next));
        let (mut found, mut newest) = (SLOTS, 0);
        let mut i = 0;
        while i < SLOTS {
            let slot = addr_of!((*h).slots[i]);
            if read_volatile(addr_of!((*slot).sk)) == sk && read_volatile(addr_of!((*slot).key)) == key {
                let at = read_volatile(addr_of!((*slot).seq));
                if found == SLOTS || at > newest {
                    (found, newest) = (i, at);
                }
            }
            i += 1;
        }
        if found < SLOTS {
            write_volatile(addr_of_mut!((*h).slots[found].sk), 0);
            return Verdict::Handled;
        }
        let since = next.wrapping_sub(read_volatile(addr_of!((*h).seen)));
        if since >= SLOTS as u64 { Verdict::Handled } else { Verdict::Recover }
    }
}

/// The backup's last step, whatever [`take`] said.
///
/// # Safety
/// As for [`record`].
#[inline(always)]
pub unsafe fn done(h: *mut Handled) {
    unsafe {
        write_volatile(addr_of_mut!((*h).seen), read_volatile(addr_of!((*h).next)));
        write_volatile(addr_of_mut!((*h).in_backup), 0);
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{vec, vec::Vec};

    use super::*;

    /// A key of states alone: the worst case, where every recycled address matches.
    fn states(old: u32, new: u32) -> u64 {
        key(old, new, 0, 0)
    }

    /// Where, in the run for the outer transition, nested transitions arrive.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum At {
        /// Inside the primary's run, before its first instruction.
        PrimaryHead,
        /// Inside the primary's run, after its note.
        PrimaryBody,
        /// Between the two programs.
        Between,
        /// Inside the backup's run (its guard taken), before `begin`: kernel instructions.
        BackupGuard,
        /// Inside the backup's run, after `begin`, before its test.
        BackupHead,
        /// Inside the backup's run, between its test and its end.
        BackupBody,
        /// Inside the backup's run, after `done`: kernel instructions.
        BackupTail,
    }
    const POINTS: [At; 7] = [
        At::PrimaryHead,
        At::PrimaryBody,
        At::Between,
        At::BackupGuard,
        At::BackupHead,
        At::BackupBody,
        At::BackupTail,
    ];

    /// The kernel's instructions around the backup's body, where a stale note can be left.
    fn kernel_window(at: At) -> bool {
        matches!(at, At::BackupGuard | At::BackupTail)
    }

    /// One transition: an id of its own (the test's), and what the programs see.
    #[derive(Clone, Copy, Debug)]
    struct T {
        id: u64,
        sk: u64,
        key: u64,
    }

    /// Socket addresses recycle as the kernel's slab does, each with the same key every time (the
    /// same states, and, unlike the kernel's, the same ports): old notes of an address meet its
    /// next sockets. No two of the addresses in flight at once are the same (bursts are shorter than
    /// the cycle).
    fn ev(id: u64) -> T {
        T { id, sk: 0xffff_8881_0000_0000 + (id % 64) * 0x800, key: states(1 + (id % 2) as u32, 7) }
    }

    /// One CPU: the kernel's per-program guards around the two programs.
    #[derive(Default)]
    struct Cpu {
        h: Handled,
        primary_active: bool,
        backup_active: bool,
        handled: Vec<u64>,
        primary_misses: u64,
        recovered: u64,
    }

    impl Cpu {
        fn primary(&mut self, t: T, nest: &mut dyn FnMut(&mut Self, At)) {
            if self.primary_active {
                self.primary_misses += 1;
                return;
            }
            self.primary_active = true;
            nest(self, At::PrimaryHead);
            unsafe { record(&mut self.h, t.sk, t.key) };
            nest(self, At::PrimaryBody);
            self.handled.push(t.id);
            self.primary_active = false;
        }

        fn backup(&mut self, t: T, nest: &mut dyn FnMut(&mut Self, At)) {
            if self.backup_active {
                return;
            }
            self.backup_active = true;
            nest(self, At::BackupGuard);
            unsafe { begin(&mut self.h) };
            nest(self, At::BackupHead);
            if unsafe { take(&mut self.h, t.sk, t.key) } == Verdict::Recover {
                self.recovered += 1;
                self.handled.push(t.id);
            }
            nest(self, At::BackupBody);
            unsafe { done(&mut self.h) };
            nest(self, At::BackupTail);
            self.backup_active = false;
        }

        /// The tracepoint firing for `t`: both programs in attach order, `nest` called at each
        /// point of the outer run.
        fn fire(&mut self, t: T, nest: &mut dyn FnMut(&mut Self, At)) {
            self.primary(t, nest);
            nest(self, At::Between);
            self.backup(t, nest);
        }

        /// No transition handled twice; what was not handled is in the loss count. Returns it.
        fn check(&self, fired: &[u64], what: &str) -> u64 {
            let mut handled = self.handled.clone();
            handled.sort();
            let n = handled.len();
            handled.dedup();
            assert_eq!(handled.len(), n, "{what}: a transition handled twice");
            assert!(handled.iter().all(|id| fired.contains(id)), "{what}: handled what never fired");
            assert!(self.recovered <= self.primary_misses, "{what}: more recovered than skipped");
            let lost = (fired.len() - handled.len()) as u64;
            assert_eq!(lost, self.primary_misses - self.recovered, "{what}: every unhandled transition counted");
            lost
        }
    }

    /// Fire transition `first` with `burst` transitions nesting at `at` (ids `first + 1..`, one
    /// after another as in softirq, none nesting further). Returns the ids fired.
    fn fire_nested(cpu: &mut Cpu, first: u64, at: At, burst: u64) -> Vec<u64> {
        let mut fired = vec![first];
        let mut left = burst;
        cpu.fire(ev(first), &mut |cpu, point| {
            if point != at {
                return;
            }
            while left > 0 {
                let id = first + fired.len() as u64;
                cpu.fire(ev(id), &mut |_, _| {});
                fired.push(id);
                left -= 1;
            }
        });
        fired
    }

    /// [`fire_nested`], then a few plain transitions.
    fn run(cpu: &mut Cpu, first: u64, at: At, burst: u64) -> Vec<u64> {
        let mut fired = fire_nested(cpu, first, at, burst);
        for _ in 0..3 {
            let id = first + fired.len() as u64;
            cpu.fire(ev(id), &mut |_, _| {});
            fired.push(id);
        }
        fired
    }

    #[test]
    fn every_transition_is_handled_once_wherever_and_however_much_nests() {
        for at in POINTS {
            for burst in 0..=3 * SLOTS as u64 {
                let mut cpu = Cpu::default();
                let mut fired = Vec::new();
                // Rounds on the same CPU, so earlier notes (stale ones included) are there, and
                // recycled addresses meet them.
                for round in 0..12 {
                    fired.extend(run(&mut cpu, round * 100, at, burst));
                }
                let lost = cpu.check(&fired, &std::format!("{at:?}, burst {burst}"));
                if !kernel_window(at) {
                    assert_eq!(lost, 0, "{at:?}, burst {burst}: all recovered");
                }
            }
        }
    }

    /// Random nesting at `points`, any burst, recycled addresses: (lost, skipped).
    fn random_mix(points: &[At]) -> (u64, u64) {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut cpu = Cpu::default();
        let mut fired = Vec::new();
        let mut id = 0;
        while id < 20_000 {
            let at = points[rnd(points.len() as u64) as usize];
            let burst = if rnd(4) == 0 { rnd(3 * SLOTS as u64) } else { rnd(3) };
            let ids = fire_nested(&mut cpu, id, at, burst);
            id += ids.len() as u64;
            fired.extend(ids);
        }
        let lost = cpu.check(&fired, &std::format!("random mix at {points:?}"));
        assert!(cpu.primary_misses > 1000, "the mix nests often: {}", cpu.primary_misses);
        (lost, cpu.primary_misses)
    }

    /// Anywhere: never a transition twice, and whatever is not handled is in the loss count
    /// (`check`). Outside the kernel's instructions around the backup: nothing lost at all.
    #[test]
    fn random_nesting_never_duplicates_and_every_gap_is_counted() {
        let (lost, skipped) = random_mix(&POINTS);
        assert!(lost > 0 && lost < skipped, "stale notes do arise here: {lost} of {skipped}");
        let ours: Vec<At> = POINTS.into_iter().filter(|&a| !kernel_window(a)).collect();
        assert_eq!(random_mix(&ours).0, 0);
    }

    /// What was measured against the kernel before `begin`: a note left by a transition nested in
    /// a backup matched a later, skipped transition of a recycled socket with the same states, and
    /// took a pending note with it, which was then handled twice.
    #[test]
    fn a_transition_nested_in_a_backup_leaves_no_note() {
        let mut h = Handled::default();
        let (old, outer) = (ev(3), ev(10));
        let recycled = T { id: 67, ..old }; // same address and states as `old`
        unsafe {
            // `old` nests inside some backup's body: its primary runs, its backup is skipped.
            begin(&mut h);
            record(&mut h, old.sk, old.key);
            done(&mut h);
            // The outer transition's primary, then `recycled` nests before the outer backup with
            // its primary skipped (say, inside the outer primary's last instructions).
            record(&mut h, outer.sk, outer.key);
            begin(&mut h);
            assert_eq!(take(&mut h, recycled.sk, recycled.key), Verdict::Recover, "no stale note to match");
            done(&mut h);
            begin(&mut h);
            assert_eq!(take(&mut h, outer.sk, outer.key), Verdict::Handled, "the pending note is still there");
            done(&mut h);
        }
    }

    #[test]
    fn keys_tell_states_and_sockets_apart() {
        let k = key(4, 5, 0x1234_0050, 0x0100_007f);
        assert_eq!(k & 0xffff, 4 << 8 | 5);
        assert_eq!(k >> 32, 0x1234_0050);
        assert_ne!(k, key(4, 5, 0x1235_0050, 0x0100_007f), "another local port");
        assert_ne!(k, key(4, 5, 0x1234_0050, 0x0200_007f), "another remote address");
        assert_ne!(k, key(5, 4, 0x1234_0050, 0x0100_007f), "other states");
    }

    #[test]
    fn the_newest_note_is_taken_out_and_a_missing_one_recovered() {
        let mut h = Handled::default();
        let (a, b) = (ev(1), ev(2));
        unsafe {
            record(&mut h, a.sk, a.key);
            assert_eq!(take(&mut h, b.sk, b.key), Verdict::Recover, "never noted");
            assert_eq!(take(&mut h, a.sk, a.key), Verdict::Handled);
            done(&mut h);
            assert_eq!(take(&mut h, a.sk, a.key), Verdict::Recover, "a note is taken once");
            // Same socket, other states: a different transition.
            record(&mut h, a.sk, states(4, 5));
            assert_eq!(take(&mut h, a.sk, states(5, 7)), Verdict::Recover);
            assert_eq!(take(&mut h, a.sk, states(4, 5)), Verdict::Handled);
            // Two notes alike: the newer goes first.
            record(&mut h, a.sk, a.key);
            record(&mut h, b.sk, b.key);
            record(&mut h, a.sk, a.key);
            assert_eq!(take(&mut h, a.sk, a.key), Verdict::Handled);
            let left: Vec<u64> = h.slots.iter().filter(|s| s.sk == a.sk).map(|s| s.seq).collect();
            assert_eq!(left, vec![h.next - 3], "the older note stays");
        }
    }
}
