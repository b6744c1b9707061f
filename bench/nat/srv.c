/* srv.c -- the benchmark's servers in the `wan` namespace (single-threaded epoll, no deps).
 *
 *   srv ADDR            e.g.  srv 198.51.100.130   or   srv 2001:db8:2::130
 *
 * Listens on ADDR (IPv4 or IPv6):
 *   TCP :8080  "http-close": reads one request, answers a fixed 71-byte HTTP/1.1 response with
 *              "Connection: close" and closes first (like an HTTP/1.0 server). Used for conn/s.
 *   TCP :9000  echo with TCP_NODELAY. Used for request/response latency and for holding
 *              1000 idle flows open.
 * Data flow: epoll -> accept -> per-connection read -> write back (echo) or fixed reply + close.
 * Idea taken from shared/baselines/nbsrv.c; UDP and multi-address parts dropped (not measured here).
 * Build: cc -O2 -o srv srv.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

enum { L_HTTP = 1, L_ECHO = 2, C_HTTP = 3, C_ECHO = 4 };

static const char RESP[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
static int ep;

static void add(int fd, int kind) {
  struct epoll_event ev = {.events = EPOLLIN};
  ev.data.u64 = ((uint64_t)kind << 32) | (uint32_t)fd;
  if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) { perror("epoll_ctl"); exit(1); }
}

static int listen_on(const char *addr, int port) {
  struct sockaddr_storage ss = {0};
  struct sockaddr_in *s4 = (void *)&ss;
  struct sockaddr_in6 *s6 = (void *)&ss;
  socklen_t len;
  if (inet_pton(AF_INET, addr, &s4->sin_addr) == 1) {
    s4->sin_family = AF_INET, s4->sin_port = htons(port), len = sizeof *s4;
  } else if (inet_pton(AF_INET6, addr, &s6->sin6_addr) == 1) {
    s6->sin6_family = AF_INET6, s6->sin6_port = htons(port), len = sizeof *s6;
  } else { fprintf(stderr, "bad addr %s\n", addr); exit(1); }
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(fd, (void *)&ss, len) < 0) { fprintf(stderr, "bind %s:%d: %s\n", addr, port, strerror(errno)); exit(1); }
  if (listen(fd, 4096) < 0) { perror("listen"); exit(1); }
  return fd;
}

int main(int argc, char **argv) {
  if (argc != 2) { fprintf(stderr, "usage: srv ADDR\n"); return 2; }
  signal(SIGPIPE, SIG_IGN);
  ep = epoll_create1(EPOLL_CLOEXEC);
  add(listen_on(argv[1], 8080), L_HTTP);
  add(listen_on(argv[1], 9000), L_ECHO);
  char buf[65536];
  struct epoll_event evs[256];
  for (;;) {
    int n = epoll_wait(ep, evs, 256, -1);
    if (n < 0) { if (errno == EINTR) continue; perror("epoll_wait"); return 1; }
    for (int i = 0; i < n; i++) {
      int kind = (int)(evs[i].data.u64 >> 32), fd = (int)(uint32_t)evs[i].data.u64;
      if (kind == L_HTTP || kind == L_ECHO) {
        for (;;) {
          int c = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (c < 0) break;
          if (kind == L_ECHO) { int one = 1; setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); }
          add(c, kind == L_HTTP ? C_HTTP : C_ECHO);
        }
      } else if (kind == C_HTTP) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r > 0) { ssize_t w = write(fd, RESP, sizeof RESP - 1); (void)w; }
        if (r >= 0 || (errno != EAGAIN && errno != EINTR)) close(fd);
      } else {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r > 0) {
          ssize_t off = 0;
          int spins = 0;
          while (off < r && spins < 100000) { /* small messages; bounded retry on a full send buffer */
            ssize_t w = write(fd, buf + off, r - off);
            if (w < 0) { if (errno == EAGAIN) { spins++; continue; } break; }
            off += w;
          }
        } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) close(fd);
      }
    }
  }
}
