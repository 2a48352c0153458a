'use strict'
// Loads the addon: a prebuilt binary from prebuilds/ first, then the local cmake-js build
// (build/Release). node-gyp-build does both lookups.
module.exports = require('node-gyp-build')(require('path').join(__dirname, '..'))
