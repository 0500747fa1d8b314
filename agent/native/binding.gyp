# The Weft libbpf binding: node-addon-api over the system libbpf (Debian's libbpf-dev, headers in
# /usr/include/bpf). No C++ exceptions: every failure becomes a JavaScript Error with errno and code.
{
  'targets': [
    {
      'target_name': 'weft_bpf',
      'sources': [
        'addon.cc',
        'common.cc',
        'object.cc',
        'fd_ops.cc',
        'ringbuf.cc',
        'netns.cc',
        'btf.cc',
        'memory.cc',
      ],
      'include_dirs': [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        '/usr/include/bpf',
      ],
      'defines': [ 'NAPI_VERSION=9', 'NAPI_DISABLE_CPP_EXCEPTIONS', '_GNU_SOURCE' ],
      'cflags_cc!': [ '-std=gnu++17', '-std=gnu++20' ],
      'cflags_cc': [ '-std=c++17', '-fno-exceptions', '-Wall', '-Wextra', '-Wno-missing-field-initializers', '-Wno-unused-parameter' ],
      'libraries': [ '-lbpf', '-lelf', '-lz' ],
    },
  ],
}
