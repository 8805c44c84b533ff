# shellcheck shell=bash
# qemu-binfmt.sh: find Debian's qemu-user and register it with binfmt_misc, for the scripts that build
# foreign-architecture trees with mmdebstrap (testdata/arm64/make-image.sh, scripts/make-base-image.sh --arch arm64).
# Sourced, not run. Callers provide log() and die().
#
# Two layouts of Debian's packages are accepted (shared/DESIGN.md section 6):
#   qemu-user-static 7.2 (Debian 12):
#     /usr/share/binfmts/qemu-<cpu>            binfmt-support definition (magic, mask, offset, interpreter lines)
#     /usr/lib/binfmt.d/qemu-<cpu>.conf        systemd-binfmt definition
#     /usr/libexec/qemu-binfmt/<cpu>-binfmt-P  -> /usr/bin/qemu-<cpu>-static (static)
#   qemu-user 10 (bookworm-backports, Debian 13; qemu-user-static is only a transitional package there):
#     /usr/lib/binfmt.d/qemu-<cpu>.conf        from qemu-user-binfmt, -> /usr/share/qemu/binfmt.d/qemu-<cpu>.conf
#     /usr/share/qemu/binfmt.d/qemu-<cpu>.conf from qemu-user
#     /usr/libexec/qemu-binfmt/<cpu>-binfmt-P  -> /usr/bin/qemu-<cpu> (static-pie)
#     /usr/bin/qemu-<cpu>-static               -> qemu-<cpu>, only with the transitional qemu-user-static
#     and no /usr/share/binfmts at all.
#
# The interpreter registered is always a plain, statically linked qemu-<cpu> binary with the F flag (the kernel opens
# it at registration, so nothing is copied into the chroot), never a *-binfmt-P name: qemu reads that suffix of its
# argv[0] as "registered with the P flag" and would then misread its arguments.

QEMU_BINFMT_DIR=/proc/sys/fs/binfmt_misc
QEMU_BINFMT_OURS=""     # the handler qemu_binfmt_ensure registered; qemu_binfmt_remove removes it

# Whether FILE is a statically linked executable (it must be: a chroot has none of the host's libraries).
qemu_binfmt_is_static() {
    [[ -f "$1" && -x "$1" ]] || return 1
    local out
    out="$(LC_ALL=C ldd "$1" 2>&1)" || true
    [[ "$out" == *"statically linked"* || "$out" == *"not a dynamic executable"* ]]
}

# qemu_binfmt_find CPU [ROOT]
# Finds the binfmt_misc definition and a static interpreter for qemu-user's CPU (aarch64, ...) in either layout, on
# this host or below ROOT (a directory holding extracted packages, for tests). On success sets
#   QEMU_BINFMT_SOURCE  the definition file read
#   QEMU_BINFMT_OFFSET  the magic's offset (bytes)
#   QEMU_BINFMT_MAGIC   magic, as binfmt_misc \xNN escapes
#   QEMU_BINFMT_MASK    mask, likewise (same length)
#   QEMU_BINFMT_INTERP  the static interpreter to register (a path below ROOT, symlinks resolved)
# and returns 0; otherwise sets QEMU_BINFMT_ERROR to what is missing and returns 1.
qemu_binfmt_find() {
    local cpu=$1 root=${2:-}
    QEMU_BINFMT_SOURCE="" QEMU_BINFMT_OFFSET="" QEMU_BINFMT_MAGIC="" QEMU_BINFMT_MASK="" QEMU_BINFMT_INTERP=""
    QEMU_BINFMT_ERROR=""
    local def_interp="" f
    local -a defs=(
        "$root/etc/binfmt.d/qemu-$cpu.conf"
        "$root/usr/lib/binfmt.d/qemu-$cpu.conf"
        "$root/usr/share/qemu/binfmt.d/qemu-$cpu.conf"
        "$root/usr/share/binfmts/qemu-$cpu"
    )
    for f in "${defs[@]}"; do
        [[ -f "$f" ]] || continue
        if [[ "$f" == *.conf ]]; then
            # systemd-binfmt / binfmt_misc register format: :name:type:offset:magic:mask:interpreter:flags
            local line name type offset magic mask interp flags
            while IFS= read -r line || [[ -n "$line" ]]; do
                [[ -z "$line" || "$line" == '#'* || "$line" == ';'* ]] && continue
                IFS=: read -r _ name type offset magic mask interp flags <<<"$line"
                if [[ "$type" == M && -n "$magic" ]]; then
                    QEMU_BINFMT_OFFSET=${offset:-0} QEMU_BINFMT_MAGIC=$magic QEMU_BINFMT_MASK=$mask def_interp=$interp
                    break
                fi
            done <"$f"
        else
            # binfmt-support format: one "key value" per line
            QEMU_BINFMT_MAGIC="$(sed -n 's/^magic //p' "$f")"
            QEMU_BINFMT_MASK="$(sed -n 's/^mask //p' "$f")"
            QEMU_BINFMT_OFFSET="$(sed -n 's/^offset //p' "$f")"
            QEMU_BINFMT_OFFSET=${QEMU_BINFMT_OFFSET:-0}
            def_interp="$(sed -n 's/^interpreter //p' "$f")"
        fi
        if [[ -n "$QEMU_BINFMT_MAGIC" ]]; then
            QEMU_BINFMT_SOURCE=$f
            break
        fi
    done
    if [[ -z "$QEMU_BINFMT_MAGIC" ]]; then
        QEMU_BINFMT_ERROR="no binfmt definition for qemu-$cpu (looked for ${defs[*]})"
        return 1
    fi
    [[ "$QEMU_BINFMT_OFFSET" =~ ^[0-9]+$ ]] || { QEMU_BINFMT_ERROR="bad offset '$QEMU_BINFMT_OFFSET' in $QEMU_BINFMT_SOURCE"; return 1; }

    # The interpreter: the definition's own (its -binfmt-P name resolved to the binary), else the usual names.
    local c real
    local -a tried=()
    for c in ${def_interp:+"$root$def_interp"} "$root/usr/bin/qemu-$cpu-static" "$root/usr/bin/qemu-$cpu"; do
        tried+=("$c")
        real="$(readlink -f -- "$c" 2>/dev/null)" || continue
        [[ "$real" != *-binfmt-P ]] || continue
        if qemu_binfmt_is_static "$real"; then
            QEMU_BINFMT_INTERP=$real
            return 0
        fi
    done
    QEMU_BINFMT_ERROR="no statically linked qemu-$cpu interpreter (tried ${tried[*]}; definition $QEMU_BINFMT_SOURCE)"
    return 1
}

# qemu_binfmt_ensure CPU TAG
# Makes the kernel run CPU binaries through qemu-user in a chroot: uses the host's enabled handler qemu-CPU when it has
# the F flag (Debian's packages register it with F), otherwise registers the interpreter qemu_binfmt_find found under
# the name TAG-qemu-CPU-<pid>, flags F, and records it for qemu_binfmt_remove. Mounts binfmt_misc when it is not
# (call it in a private mount namespace, so that the mount goes with it). Dies with one clear message on failure.
qemu_binfmt_ensure() {
    local cpu=$1 tag=$2 name
    if [[ ! -e "$QEMU_BINFMT_DIR/register" ]]; then
        mount -t binfmt_misc binfmt_misc "$QEMU_BINFMT_DIR" || die "cannot mount binfmt_misc at $QEMU_BINFMT_DIR"
    fi
    [[ "$(cat "$QEMU_BINFMT_DIR/status")" == enabled ]] || die "binfmt_misc is disabled ($QEMU_BINFMT_DIR/status)"
    name="qemu-$cpu"
    if [[ -f "$QEMU_BINFMT_DIR/$name" ]] && head -n 1 "$QEMU_BINFMT_DIR/$name" | grep -qx enabled &&
        grep -Eqx 'flags: [A-Z]*F[A-Z]*' "$QEMU_BINFMT_DIR/$name"; then
        log "using the host's binfmt handler $name ($(sed -n 's/^interpreter //p' "$QEMU_BINFMT_DIR/$name"), flags $(sed -n 's/^flags: //p' "$QEMU_BINFMT_DIR/$name"))"
        return 0
    fi
    qemu_binfmt_find "$cpu" ||
        die "running $cpu programs on this host needs Debian's qemu-user (apt-get install qemu-user-static): $QEMU_BINFMT_ERROR"
    name="$tag-qemu-$cpu-$$"
    printf ':%s:M:%s:%s:%s:%s:F' "$name" "$QEMU_BINFMT_OFFSET" "$QEMU_BINFMT_MAGIC" "$QEMU_BINFMT_MASK" "$QEMU_BINFMT_INTERP" \
        >"$QEMU_BINFMT_DIR/register" || die "cannot register the binfmt handler $name ($QEMU_BINFMT_INTERP)"
    QEMU_BINFMT_OURS=$name
    log "registered binfmt handler $name ($QEMU_BINFMT_INTERP, flags F; magic from $QEMU_BINFMT_SOURCE)"
}

# Removes the handler qemu_binfmt_ensure registered, if any. Safe to call twice.
qemu_binfmt_remove() {
    [[ -n "$QEMU_BINFMT_OURS" ]] || return 0
    if [[ -f "$QEMU_BINFMT_DIR/$QEMU_BINFMT_OURS" ]]; then
        echo -1 >"$QEMU_BINFMT_DIR/$QEMU_BINFMT_OURS" || log "warning: could not remove binfmt handler $QEMU_BINFMT_OURS"
    fi
    QEMU_BINFMT_OURS=""
}
