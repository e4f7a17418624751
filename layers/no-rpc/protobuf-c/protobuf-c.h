/* Layer guard (layers/README.md): this library sits below the RPC layer, so
 * it may not include <protobuf-c/protobuf-c.h>. */
#error "<protobuf-c/protobuf-c.h> is the RPC layer's: not included from this library (see README.md, Code map)"
