# tests/lib/ssh-board.sh - an OpenSSH server for "the board" and a client set up to reach it, for
# the tests and demos that ssh into the board through qbkit-host (tests/netns/forward-e2e,
# tests/vm/scenarios/ssh-usb, scripts/demo, tests/vm/demo-guest). Sourced; defines functions only.
#
#   ssh_board_setup DIR CONNECT_TIMEOUT NAME...
#     DIR (mode 0700): host_ed25519 (the board's host key), id_ed25519 (the laptop's key, the only
#     authorized one), known_hosts (the host key under every NAME: "[127.0.0.1]:2222", "qbkit", an
#     address), sshd_config (0.0.0.0:22, keys in DIR, no passwords, no PAM) and ssh_common (a
#     "Host *" block: only these keys, strict host key checking, batch mode). Also makes
#     /run/sshd, sshd's privilege separation directory. Start the server in the board's network
#     namespace with `/usr/sbin/sshd -D -e -f DIR/sshd_config`.
#   ssh_board_config DIR < HOST_BLOCKS
#     Writes DIR/ssh_config: the caller's Host blocks (stdin), then ssh_common; use `ssh -F`.

ssh_board_setup() {
    local dir=$1 timeout=$2 ktype kdata names
    shift 2
    names=$(IFS=,; echo "$*")
    mkdir -p -m 700 "$dir" || return 1
    ssh-keygen -q -t ed25519 -N '' -C qbkit-board -f "$dir/host_ed25519" || return 1
    ssh-keygen -q -t ed25519 -N '' -C qbkit-laptop -f "$dir/id_ed25519" || return 1
    cp "$dir/id_ed25519.pub" "$dir/authorized_keys"
    read -r ktype kdata _ < "$dir/host_ed25519.pub"
    echo "$names $ktype $kdata" > "$dir/known_hosts"
    cat > "$dir/sshd_config" <<EOC
# The board's sshd for a qbkit-net test or demo: keys in $dir, no passwords, no PAM.
ListenAddress 0.0.0.0:22
AddressFamily inet
HostKey $dir/host_ed25519
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin prohibit-password
PermitUserRC no
PrintMotd no
PrintLastLog no
UseDNS no
LogLevel VERBOSE
Subsystem sftp internal-sftp
EOC
    # curve25519 key exchange: the default first choice (sntrup761x25519) costs seconds per
    # connection under the VM's TCG emulation.
    cat > "$dir/ssh_common" <<EOC
Host *
    User root
    IdentityFile $dir/id_ed25519
    IdentitiesOnly yes
    IdentityAgent none
    UserKnownHostsFile $dir/known_hosts
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    CheckHostIP no
    UpdateHostKeys no
    BatchMode yes
    ConnectTimeout $timeout
    LogLevel ERROR
    KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org
EOC
    [ -d /run/sshd ] || install -d -m 755 /run/sshd
    /usr/sbin/sshd -t -f "$dir/sshd_config"
}

ssh_board_config() {
    local dir=$1
    { cat; cat "$dir/ssh_common"; } > "$dir/ssh_config"
}

# ssh_board_show DIR GW IFACE RUN...: the demos' ssh step. ssh into the board through the forward
# 2222:22 and through `Host qbkit` (ProxyCommand qbkit-host connect), each printing the board's
# IFACE address and where the login came from; true when both came from the gateway GW. RUN...
# runs a command in the laptop's network namespace (`ip netns exec NS`, `in_ns wan`).
ssh_board_show() {
    local dir=$1 gw=$2 iface=$3 o1= o2= cmd
    shift 3
    cmd='echo "on the board: $(ip -br -4 addr show '"$iface"' | tr -s " "), ssh from ${SSH_CONNECTION%% *}"'
    echo "\$ ssh -p 2222 root@localhost        (qbkit-host run --forward 2222:22)"
    o1=$("$@" ssh -F "$dir/ssh_config" -p 2222 root@127.0.0.1 "$cmd") && echo "$o1"
    echo "\$ ssh qbkit                         (ProxyCommand qbkit-host connect %p: no laptop port at all)"
    o2=$("$@" ssh -F "$dir/ssh_config" qbkit "$cmd") && echo "$o2"
    [[ $o1 == *"ssh from $gw"* && $o2 == *"ssh from $gw"* ]]
}
