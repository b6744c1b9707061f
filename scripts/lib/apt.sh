# scripts/lib/apt.sh - package installation shared by scripts/test and scripts/demo. Sourced.

# apt-get install without starting services: openssh-server would otherwise start a system sshd
# on port 22 of this machine (the netns tests run their own sshd inside a namespace). A
# policy-rc.d that answers 101 (action forbidden) covers the install; it is written only if none
# exists and removed afterwards, also on failure. When this run installs openssh-server, the
# enabled unit is kept from starting at boot too (/etc/ssh/sshd_not_to_be_run, which ssh.service
# and /etc/init.d/ssh honour; delete that file to use a system sshd).
apt_install_no_services() {
  local policy=/usr/sbin/policy-rc.d ours=0 rc=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# written by qbkit-net scripts/test for one apt-get install\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    ours=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get install -y -qq --no-install-recommends "$@" || rc=$?
  if [ "$ours" = 1 ]; then rm -f "$policy"; trap - EXIT; fi
  if [ "$rc" = 0 ] && [[ " $* " == *" openssh-server "* ]] && [ ! -e /etc/ssh/sshd_not_to_be_run ]; then
    echo "installed by qbkit-net scripts/test for its netns tests; delete to let ssh.service start" \
      > /etc/ssh/sshd_not_to_be_run
  fi
  return "$rc"
}
