package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// spoolFSSize is the tmpfs the spool lives on with SOAK_DISKFULL=1: room
// for the soak's queue many times over, small enough to fill in a moment
// (its pages are RAM). It must stay well above the spool's own refusal
// threshold (spool.Options.MinFreeBytes, by default 2 × 64 MiB memtable +
// 64 MiB = 192 MiB) plus pebble's write-ahead logs, each preallocated to
// 1.1 × the 64 MiB memtable (≈70 MiB) and several kept at once: on 256 and
// 512 MiB tmpfs, five WALs (≈350 MiB) left less than the reserve within
// 10 s of the start and every Put was refused from then on.
const (
	spoolFSSize = "2g"
	spoolFSMiB  = 2048
)

// diskBallast fills the spool's file system with one file during a
// "disk full" phase and removes it after, so the spool sees ENOSPC and
// then space again.
type diskBallast struct {
	mnt    string
	path   string
	full   bool
	faults *faultCounts
}

// mountSpool mounts a size-limited tmpfs at dir (root only).
func mountSpool(dir string, fc *faultCounts) (*diskBallast, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+spoolFSSize+",mode=0700"); err != nil {
		return nil, fmt.Errorf("mount tmpfs on %s: %w", dir, err)
	}
	// The ballast sits beside mtad's files, on the same file system.
	return &diskBallast{mnt: dir, path: filepath.Join(dir, "soak-ballast"), faults: fc}, nil
}

// phase fills the file system (full) or frees it.
func (b *diskBallast) phase(full bool) {
	if full == b.full {
		return
	}
	b.full = full
	if !full {
		if err := os.Remove(b.path); err != nil {
			fmt.Println("soak: remove ballast:", err)
		}
		return
	}
	b.faults.add("disk full (spool tmpfs filled)")
	f, err := os.OpenFile(b.path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		fmt.Println("soak: ballast:", err)
		return
	}
	defer f.Close()
	chunk := make([]byte, 1<<20)
	// Bounded by the file system's size: ENOSPC comes before the last write.
	for range spoolFSMiB + 8 {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				fmt.Println("soak: ballast:", err)
			}
			return
		}
	}
}

func (b *diskBallast) unmount() {
	if err := syscall.Unmount(b.mnt, 0); err != nil {
		fmt.Println("soak: unmount spool tmpfs:", err)
	}
}
