package proxy

// ProfilesServed says whether this build serves /debug/pprof/ (the pprof tag).
const ProfilesServed = profilesServed
