/* Test-only stand-in for Windows 10's bcryptprimitives.dll under Wine 8, which lacks it.
 *
 * Rust's std (1.78+) gets its random numbers from ProcessPrng in bcryptprimitives.dll; without
 * the DLL a Rust .exe exits at once with status 53. This DLL exports ProcessPrng on top of
 * RtlGenRandom (advapi32's SystemFunction036, which Wine has). tests/src/wine.rs builds it with
 * mingw and copies it into each test's private WINEPREFIX only: real Windows has the DLL. */
#include <windows.h>
#define SystemFunction036 NTAPI SystemFunction036
#include <ntsecapi.h>
#undef SystemFunction036

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x7fffffff ? 0x7fffffff : (ULONG)len;
        if (!RtlGenRandom(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
