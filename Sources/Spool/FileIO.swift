import CFileSystem

#if canImport(Glibc)
import Glibc
#endif

/// Thin blocking wrappers over the file syscalls the spool needs. Every call blocks: the spool's callers run it
/// off the cooperative pool.
struct FileHandle {
    let fd: Int32
    let path: String

    static func open(_ path: String, flags: Int32, mode: mode_t = 0o640) throws(SpoolError) -> FileHandle {
        let fd = Glibc.open(path, flags | O_CLOEXEC, mode)
        guard fd >= 0 else { throw SpoolError(.io, "cannot open \(path)", errno: Glibc.errno) }
        return FileHandle(fd: fd, path: path)
    }

    func close() { _ = Glibc.close(fd) }

    /// A second descriptor for the same open file (fdatasync through it covers every write made through either).
    func duplicate() throws(SpoolError) -> FileHandle {
        let copy = fcntl(fd, F_DUPFD_CLOEXEC, 0)
        guard copy >= 0 else { throw SpoolError(.io, "cannot duplicate the descriptor of \(path)", errno: Glibc.errno) }
        return FileHandle(fd: copy, path: path)
    }

    func size() throws(SpoolError) -> Int {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw SpoolError(.io, "cannot stat \(path)", errno: Glibc.errno) }
        return Int(st.st_size)
    }

    /// Writes all of `bytes` at the end (the file is opened O_APPEND).
    func append(_ bytes: [UInt8]) throws(SpoolError) {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + done, bytes.count - done) }
            if n < 0 {
                if Glibc.errno == EINTR { continue }
                throw SpoolError(.io, "cannot write \(path)", errno: Glibc.errno)
            }
            done += n
        }
    }

    func read(offset: Int, count: Int) throws(SpoolError) -> [UInt8] {
        var failure: SpoolError?
        // Uninitialized storage: only what pread filled is kept.
        let out = [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            do throws(SpoolError) {
                initialized = try read(offset: offset, into: UnsafeMutableRawBufferPointer(buffer))
            } catch {
                failure = error
                initialized = 0
            }
        }
        if let failure { throw failure }
        return out
    }

    /// Fills `buffer` from `offset` (less at the end of the file); returns how many bytes were read.
    func read(offset: Int, into buffer: UnsafeMutableRawBufferPointer) throws(SpoolError) -> Int {
        var done = 0
        while done < buffer.count {
            let n = pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset + done))
            if n < 0 {
                if Glibc.errno == EINTR { continue }
                throw SpoolError(.io, "cannot read \(path)", errno: Glibc.errno)
            }
            if n == 0 { break }
            done += n
        }
        return done
    }

    func readAll() throws(SpoolError) -> [UInt8] { try read(offset: 0, count: try size()) }

    func dataSync() throws(SpoolError) {
        guard fdatasync(fd) == 0 else { throw SpoolError(.io, "cannot fdatasync \(path)", errno: Glibc.errno) }
    }

    func truncate(to length: Int) throws(SpoolError) {
        guard ftruncate(fd, off_t(length)) == 0 else { throw SpoolError(.io, "cannot truncate \(path)", errno: Glibc.errno) }
    }
}

enum Directory {
    /// mkdir; a directory it creates is made durable in its parent (fsync of the parent).
    static func create(_ path: String) throws(SpoolError) {
        if mkdir(path, 0o750) == 0 {
            let parent = path.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
            sync(parent.isEmpty ? (path.hasPrefix("/") ? "/" : ".") : parent)
        } else if Glibc.errno != EEXIST {
            throw SpoolError(.io, "cannot create \(path)", errno: Glibc.errno)
        }
    }

    /// fsync of a directory, so that created, renamed or removed entries are durable.
    static func sync(_ path: String) {
        let fd = Glibc.open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return }
        _ = fsync(fd)
        _ = Glibc.close(fd)
    }

    /// Writes everything the file system holding `path` has pending to its disk (syncfs): one call and one cache
    /// flush, however many files there are (an fdatasync per file may flush the disk cache once per file).
    static func syncFileSystem(_ path: String) throws(SpoolError) {
        let fd = Glibc.open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw SpoolError(.io, "cannot open \(path)", errno: Glibc.errno) }
        defer { _ = Glibc.close(fd) }
        guard fg_syncfs(fd) == 0 else { throw SpoolError(.io, "cannot sync the file system of \(path)", errno: Glibc.errno) }
    }

    static func list(_ path: String) -> [String] {
        guard let dir = opendir(path) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    static func remove(_ path: String) { _ = unlink(path) }
}
