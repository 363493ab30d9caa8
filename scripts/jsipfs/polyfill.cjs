// Loaded with `node --require` before js-ipfs starts. Newer releases of some
// of its dependencies (mortice, it-queue, abort-error) that npm resolves for
// ipfs 0.66.1 call Promise.withResolvers, which Node 20 lacks (Node 22 has it).
'use strict'
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve
    let reject
    const promise = new this((res, rej) => {
      resolve = res
      reject = rej
    })
    return { promise, resolve, reject }
  }
}
