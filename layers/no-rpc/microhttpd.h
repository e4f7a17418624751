/* Layer guard (layers/README.md): this library sits below the RPC layer, so
 * it may not include <microhttpd.h>. */
#error "<microhttpd.h> is the RPC layer's: not included from this library (see README.md, Code map)"
