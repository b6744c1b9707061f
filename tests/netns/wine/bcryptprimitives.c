/* Test-only stand-in for Windows' bcryptprimitives.dll, for tests/netns/wine-e2e.
 *
 * Rust's std (1.78 and later) imports ProcessPrng from bcryptprimitives.dll on Windows 10+, and
 * Debian 12's Wine 8.0 does not have that DLL, so any Rust program fails to load under it. This
 * DLL exports ProcessPrng and fills the buffer from RtlGenRandom (advapi32's SystemFunction036),
 * which Wine implements. The test builds it with mingw-w64 and puts it next to qbkit-host.exe
 * (the application directory is searched first); it is never shipped.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length); /* RtlGenRandom */

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG n = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!SystemFunction036(data, n))
            return FALSE;
        data += n;
        len -= n;
    }
    return TRUE;
}
