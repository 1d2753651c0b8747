#!/bin/sh
# Installs one .deb into a throwaway root and checks it (run by `cargo xtask dist --check`, as
# root, in its own mount namespace: `unshare -m sh install_check.sh WORK DEB PACKAGE SERVER`).
# The root is a copy-on-write overlay of /, so the package's dependencies are there and nothing
# written reaches the real system; a policy-rc.d forbids starting services. Arguments only, no
# interpolation into commands beyond quoting.
set -eu
work=$1 deb=$2 pkg=$3 server=$4
root=$work/root
mkdir -p "$work/upper" "$work/work" "$root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$work/upper,workdir=$work/work" "$root"
mount -t proc proc "$root/proc"
# The real device nodes (/dev/null for maintainer scripts' redirections); without this, a
# `>/dev/null` in the chroot would create a regular file in the overlay.
mount --rbind /dev "$root/dev"
mount -t tmpfs tmpfs "$root/tmp"
mount -t tmpfs tmpfs "$root/run"
cp "$deb" "$root/tmp/package.deb"
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
in_root() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive "$@"; }
show() { echo "+ $*"; in_root "$@"; }
# What the package left outside dpkg's own books, relative to the root. An empty directory in
# the overlay's upper layer that also exists in / is one that was copied up when the package
# wrote into it (/usr/bin, ...), not something the package left.
leftovers() {
    upper_paths | while IFS= read -r p; do
        if [ -d "$work/upper/$p" ] && [ ! -L "$work/upper/$p" ] && [ -d "/$p" ]; then
            continue
        fi
        printf '%s\n' "$p"
    done
}
upper_paths() {
    (cd "$work/upper" && find . -mindepth 1 \( -type f -o -type l -o -type d -empty \) \
        ! -path './var/lib/dpkg/*' ! -path './var/cache/*' ! -path './var/log/*' \
        ! -path './usr/sbin/policy-rc.d' ! -path './etc/group*' ! -path './etc/gshadow*' \
        ! -path './etc/passwd*' ! -path './etc/shadow*' ! -path './etc/.pwd.lock' \
        ! -path './tmp' ! -path './run' ! -path './proc' ! -path './var/lib/systemd/*' \
        ! -path './etc/systemd/*' ! -path './var/lib/ucf/*' ! -path './var/lib/man-db/*' \
        | sort)
}

show dpkg -i /tmp/package.deb
show capyknock --version
echo "+ man -l /usr/share/man/man1/capyknock.1.gz | head -n 8"
in_root env MANPAGER=cat MANWIDTH=80 man -l /usr/share/man/man1/capyknock.1.gz | head -n 8
show capyknock completions bash > /dev/null
if [ "$server" = yes ]; then
    unit=$(in_root dpkg -L "$pkg" | grep '/capyknock\.service$')
    show systemd-analyze verify "$unit"
    echo "+ stat -c '%a %U:%G' /etc/capyknock"
    in_root stat -c '%a %U:%G' /etc/capyknock
    echo "+ getent group capyknock"
    in_root getent group capyknock
    echo "+ systemctl is-enabled capyknock (not enabled, not started)"
    in_root systemctl is-enabled capyknock 2>&1 || true
fi
show dpkg --remove "$pkg"
echo "left after remove:"
left=$(leftovers)
echo "${left:-  (nothing)}"
for f in $left; do
    case $f in
        ./etc/capyknock) ;;
        *) echo "remove left a file that is not config: $f" >&2; exit 1 ;;
    esac
done
show dpkg --purge "$pkg"
echo "left after purge:"
left=$(leftovers)
echo "${left:-  (nothing)}"
if [ -n "$left" ]; then
    echo "purge left files behind" >&2
    exit 1
fi
echo "install check of $pkg: OK"
