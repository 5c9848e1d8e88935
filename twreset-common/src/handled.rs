//! The state programs' recursion protocol on one CPU: which transitions the primary took, so the
//! backup handles exactly those the kernel skipped the primary for. The kernel side keeps one
//! [`Handled`] per CPU (a per-CPU map) and calls [`record`] and [`take`]; the host tests below
//! replay every nesting the kernel allows against the same code.
//!
//! The kernel runs each raw tracepoint program at most once per CPU at a time and skips a run
//! that would nest (a state change in softirq interrupting a program run in process context). The
//! primary is attached first and calls [`record`] on entry; the backup is attached second and
//! calls [`take`] for the same transition, then [`done`] when it ends:
//! - The primary's note is there: the primary had it. Take the note out, and with it any note
//!   written after it: those were written while this one waited (transitions nested just before
//!   this backup ran, whose own backups the kernel skipped), so no backup will take them.
//! - No note, and fewer than [`SLOTS`] notes written since the last backup ended: the kernel
//!   skipped the primary (the transition nested somewhere inside the primary's run, the kernel's
//!   own instructions around the body included). The backup must handle it.
//! - No note, and [`SLOTS`] or more written since: a burst nested just before this backup ran and
//!   pushed the note out (a note is only overwritten when every slot is taken, oldest first). The
//!   primary had it.
//!
//! The only error this can make is to take a transition for handled whose primary was skipped,
//! which the loss count (`primary misses - recovered`) reports; it never handles one twice. That
//! needs a rare nesting followed by another within microseconds: a note left behind by a burst
//! nested in a backup's last instructions, matched by a later transition of the same socket with
//! the same states whose primary is skipped, or counted as "written since" by the next backup.

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
    pub slots: [Slot; SLOTS],
}
const _: () = assert!(core::mem::size_of::<Handled>() == 16 + 24 * SLOTS);

/// One note: the socket (0: none), `oldstate << 8 | newstate`, and when it was written.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    pub sk: u64,
    pub states: u64,
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

/// `oldstate << 8 | newstate`.
#[inline(always)]
pub fn states(old: u32, new: u32) -> u64 {
    (old as u64) << 8 | new as u64
}

/// The primary's first step: note the transition of `sk` in a free slot, or over the oldest note.
///
/// # Safety
/// `h` points to this CPU's `Handled`. Only code on this CPU touches it; a backup may interrupt
/// these stores (the socket is cleared first and set last, so a half-written note matches nothing).
#[inline(always)]
pub unsafe fn record(h: *mut Handled, sk: u64, states: u64) {
    unsafe {
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
        write_volatile(addr_of_mut!((*slot).states), states);
        write_volatile(addr_of_mut!((*slot).seq), seq);
        write_volatile(addr_of_mut!((*slot).sk), sk);
        write_volatile(addr_of_mut!((*h).next), seq.wrapping_add(1));
    }
}

/// The backup's test for the transition of `sk`: see the module documentation.
///
/// # Safety
/// As for [`record`].
#[inline(always)]
pub unsafe fn take(h: *mut Handled, sk: u64, states: u64) -> Verdict {
    unsafe {
        let next = read_volatile(addr_of!((*h).next));
        let mut i = 0;
        while i < SLOTS {
            let slot = addr_of_mut!((*h).slots[i]);
            if read_volatile(addr_of!((*slot).sk)) == sk && read_volatile(addr_of!((*slot).states)) == states {
                let mine = read_volatile(addr_of!((*slot).seq));
                write_volatile(addr_of_mut!((*slot).sk), 0);
                let mut j = 0;
                while j < SLOTS {
                    let other = addr_of_mut!((*h).slots[j]);
                    if read_volatile(addr_of!((*other).seq)) > mine {
                        write_volatile(addr_of_mut!((*other).sk), 0);
                    }
                    j += 1;
                }
                return Verdict::Handled;
            }
            i += 1;
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
    unsafe { write_volatile(addr_of_mut!((*h).seen), read_volatile(addr_of!((*h).next))) };
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{vec, vec::Vec};

    use super::*;

    /// Where, in the run for the outer transition, nested transitions arrive.
    #[derive(Clone, Copy, Debug)]
    enum At {
        /// Inside the primary's run, before its first instruction.
        PrimaryHead,
        /// Inside the primary's run, after its note.
        PrimaryBody,
        /// Between the two programs.
        Between,
        /// Inside the backup's run, before its test.
        BackupHead,
        /// Inside the backup's run, between its test and its end.
        BackupBody,
        /// Inside the backup's run, after its end.
        BackupTail,
    }

    /// One CPU: the kernel's per-program guards around the two programs.
    #[derive(Default)]
    struct Cpu {
        h: Handled,
        primary_active: bool,
        backup_active: bool,
        handled: Vec<(u64, u64)>,
        primary_misses: u64,
        recovered: u64,
    }

    impl Cpu {
        fn primary(&mut self, t: (u64, u64), nest: &mut dyn FnMut(&mut Self, At)) {
            if self.primary_active {
                self.primary_misses += 1;
                return;
            }
            self.primary_active = true;
            nest(self, At::PrimaryHead);
            unsafe { record(&mut self.h, t.0, t.1) };
            nest(self, At::PrimaryBody);
            self.handled.push(t);
            self.primary_active = false;
        }

        fn backup(&mut self, t: (u64, u64), nest: &mut dyn FnMut(&mut Self, At)) {
            if self.backup_active {
                return;
            }
            self.backup_active = true;
            nest(self, At::BackupHead);
            if unsafe { take(&mut self.h, t.0, t.1) } == Verdict::Recover {
                self.recovered += 1;
                self.handled.push(t);
            }
            nest(self, At::BackupBody);
            unsafe { done(&mut self.h) };
            nest(self, At::BackupTail);
            self.backup_active = false;
        }

        /// The tracepoint firing for `t`: both programs in attach order, `nest` called at each
        /// point of the outer run.
        fn fire(&mut self, t: (u64, u64), nest: &mut dyn FnMut(&mut Self, At)) {
            self.primary(t, nest);
            nest(self, At::Between);
            self.backup(t, nest);
        }
    }

    /// Transitions on distinct sockets, as the kernel's sockets are while they live.
    fn ev(i: u64) -> (u64, u64) {
        (0xffff_8881_0000_0000 + i * 0x800, states(1 + (i % 12) as u32, 7))
    }

    /// Fire `outer` with `burst` transitions nesting at `at`; then a few plain ones.
    fn run(cpu: &mut Cpu, first: u64, at: fn(At) -> bool, burst: u64) -> Vec<(u64, u64)> {
        let mut fired = vec![ev(first)];
        let mut left = burst;
        let mut id = first + 1;
        let mut nested = Vec::new();
        cpu.fire(ev(first), &mut |cpu, point| {
            if !at(point) || left == 0 {
                return;
            }
            // Softirq: transitions one after another, none nesting further.
            while left > 0 {
                cpu.fire(ev(id), &mut |_, _| {});
                nested.push(ev(id));
                id += 1;
                left -= 1;
            }
        });
        fired.extend(nested);
        for _ in 0..3 {
            cpu.fire(ev(id), &mut |_, _| {});
            fired.push(ev(id));
            id += 1;
        }
        fired
    }

    #[test]
    fn every_transition_is_handled_once_wherever_and_however_much_nests() {
        let points: [fn(At) -> bool; 6] = [
            |a| matches!(a, At::PrimaryHead),
            |a| matches!(a, At::PrimaryBody),
            |a| matches!(a, At::Between),
            |a| matches!(a, At::BackupHead),
            |a| matches!(a, At::BackupBody),
            |a| matches!(a, At::BackupTail),
        ];
        for (p, at) in points.iter().enumerate() {
            for burst in 0..=3 * SLOTS as u64 {
                let mut cpu = Cpu::default();
                let mut fired = Vec::new();
                // A few rounds on the same CPU, so earlier notes (stale ones included) are there.
                for round in 0..4 {
                    fired.extend(run(&mut cpu, round * 1000, *at, burst));
                }
                let mut handled = cpu.handled.clone();
                handled.sort();
                fired.sort();
                assert_eq!(handled, fired, "point {p}, burst {burst}: each transition exactly once");
                assert_eq!(cpu.primary_misses, cpu.recovered, "point {p}, burst {burst}: misses all recovered");
            }
        }
    }

    /// Random nesting anywhere, any burst: never a transition twice, and whatever is not handled
    /// is in the loss count.
    #[test]
    fn random_nesting_never_duplicates_and_every_gap_is_counted() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut cpu = Cpu::default();
        let mut fired = Vec::new();
        // Transition ids: the outer ones and, inside the closure, the nested ones.
        let mut id = 0;
        while id < 20_000 {
            let point = rnd(7);
            let burst = if rnd(4) == 0 { rnd(3 * SLOTS as u64) } else { rnd(3) };
            let outer = ev(id);
            id += 1;
            fired.push(outer);
            let mut left = burst;
            cpu.fire(outer, &mut |cpu, at| {
                if left == 0 || at as u64 != point {
                    return;
                }
                while left > 0 {
                    cpu.fire(ev(id), &mut |_, _| {});
                    fired.push(ev(id));
                    id += 1;
                    left -= 1;
                }
            });
        }
        let mut handled = cpu.handled.clone();
        handled.sort();
        let before = handled.len();
        handled.dedup();
        assert_eq!(handled.len(), before, "a transition handled twice");
        assert!(cpu.recovered <= cpu.primary_misses);
        let lost = fired.len() - handled.len();
        assert_eq!(lost as u64, cpu.primary_misses - cpu.recovered, "every unhandled transition is counted");
        assert!(cpu.primary_misses > 1000, "the mix nests often: {}", cpu.primary_misses);
    }

    #[test]
    fn the_newest_note_is_taken_out_and_a_missing_one_recovered() {
        let mut h = Handled::default();
        let (a, b) = (ev(1), ev(2));
        unsafe {
            record(&mut h, a.0, a.1);
            assert_eq!(take(&mut h, b.0, b.1), Verdict::Recover, "never noted");
            assert_eq!(take(&mut h, a.0, a.1), Verdict::Handled);
            done(&mut h);
            assert_eq!(take(&mut h, a.0, a.1), Verdict::Recover, "a note is taken once");
            // Same socket, other states: a different transition.
            record(&mut h, a.0, states(4, 5));
            assert_eq!(take(&mut h, a.0, states(5, 7)), Verdict::Recover);
            assert_eq!(take(&mut h, a.0, states(4, 5)), Verdict::Handled);
        }
    }
}
